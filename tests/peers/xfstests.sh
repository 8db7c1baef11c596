#!/usr/bin/env bash
# Runs xfstests on casafs and on libfuse's passthrough_hp, side by side,
# each over its own directories of one fresh ext4 image,
# both mounted as mount(8) mounts them (`mount -t fuse.<type>`, through
# mount.fuse3) with allow_other,default_permissions (passthrough_hp also
# with io_uring, as casafs uses it), and prints both summaries and the
# tests that fail on casafs only.
#
#   tests/peers/xfstests.sh [--only casafs|passthrough_hp] [TESTS...]
#
# TESTS are xfstests arguments (default: -g quick). casafs is target/release/casafs (or $CASAFS). The peers are built
# by tests/peers/build.sh; without their source this says so and exits 77.
# Exit status: 0 when no test fails on casafs that passes on
# passthrough_hp (with --only, when nothing fails), 1 otherwise. Results
# stay in target/peers/results/.
#
# Needs root. Everything it mounts lives in a private mount namespace, so
# nothing is left mounted and nothing is installed outside it; it makes the
# users fsgqa, fsgqa2 and 123456-fsgqa that xfstests expects, if missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${CASAFS_PEERS:-$root/target/peers}"
results="$out/results"

if [ -z "${CASAFS_XFSTESTS_NS:-}" ]; then
    only=""
    if [ "${1:-}" = "--only" ]; then only=$2; fi
    [ "$(id -u)" = 0 ] || { echo "xfstests: run it as root" >&2; exit 2; }
    casafs="${CASAFS:-$root/target/release/casafs}"
    [ -x "$casafs" ] || { echo "xfstests: $casafs is not built (cargo build --release)" >&2; exit 2; }
    rc=0
    "$root/tests/peers/build.sh" xfstests || rc=$?
    [ $rc = 0 ] || exit $rc
    if [ "$only" != casafs ]; then
        "$root/tests/peers/build.sh" passthrough_hp || rc=$?
        [ $rc = 0 ] || exit $rc
    fi
    for u in fsgqa fsgqa2 123456-fsgqa; do
        id "$u" >/dev/null 2>&1 || useradd -m "$u" 2>/dev/null || useradd "$u"
    done
    getent group fsgqa >/dev/null || groupadd fsgqa
    work=$(mktemp -d /var/tmp/casafs-xfstests.XXXXXX)
    # The test users reach the mounts through it.
    chmod 0755 "$work"
    rc=0
    CASAFS_XFSTESTS_NS="$work" CASAFS="$(realpath "$casafs")" \
        unshare -m --propagation private "$0" "$@" || rc=$?
    rm -rf "$work"
    exit $rc
fi

# Inside the namespace.
work=$CASAFS_XFSTESTS_NS
fss=(casafs passthrough_hp)
if [ "${1:-}" = "--only" ]; then fss=("$2"); shift 2; fi
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(-g quick)

# mount.fuse3 runs `<type> SOURCE MOUNTPOINT -o ...` from the standard PATH
# (mount(8) drops the caller's): both programs appear in /usr/local/sbin,
# here only.
mkdir -p "$work/bin" "$work/backing"
ln -s "$CASAFS" "$work/bin/casafs"
# passthrough_hp takes its source as an argument, not as -o source=.
cat >"$work/bin/passthrough_hp" <<EOF
#!/bin/bash
name=\$1 mnt=\$2; shift 2
opts=""
while [ \$# -gt 0 ]; do
    case \$1 in -o) opts="\${opts:+\$opts,}\$2"; shift 2 ;; -o*) opts="\${opts:+\$opts,}\${1#-o}"; shift ;; *) shift ;; esac
done
src="" rest=""
IFS=, read -ra parts <<<"\$opts"
for p in "\${parts[@]}"; do
    case \$p in source=*) src=\${p#source=} ;; *) rest="\${rest:+\$rest,}\$p" ;; esac
done
ulimit -n 1048576 2>/dev/null || true
exec "$out/passthrough_hp" -o "fsname=\$name\${rest:+,\$rest}" "\$src" "\$mnt"
EOF
chmod +x "$work/bin/passthrough_hp"
mount --bind "$work/bin" /usr/local/sbin

# One ext4 image holds both filesystems' directories: the same backing.
truncate -s 8G "$work/ext4.img"
mkfs.ext4 -q -F "$work/ext4.img"
mount -o loop "$work/ext4.img" "$work/backing"

# casafs's areas lie outside the directories under test, as operators
# place them (on the same disk here).
declare -A extra_test=([casafs]=",logs=$work/backing/areas/test/logs,scratch=$work/backing/areas/test/scratch" [passthrough_hp]=",io_uring")
declare -A extra_scratch=([casafs]=",logs=$work/backing/areas/scratch/logs,scratch=$work/backing/areas/scratch/scratch" [passthrough_hp]=",io_uring")
mkdir -p "$results"

# Each filesystem runs in a copy of the suite of its own, with mount points
# of its own. TEST_DEV and SCRATCH_DEV are names (xfstests unmounts by
# them); the directories are given as -o source=, as xfstests' README.fuse
# does.
run_on() {
    local fs=$1 suite="$work/$1/xfstests" mnt="$work/$1/mnt" src="$work/backing/$1"
    mkdir -p "$src/test" "$src/scratch" "$mnt/test" "$mnt/scratch"
    cp -a "$out/xfstests" "$suite"
    cat >"$suite/local.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.$fs
export TEST_DEV=${fs}_test
export TEST_DIR=$mnt/test
export SCRATCH_DEV=${fs}_scratch
export SCRATCH_MNT=$mnt/scratch
export MOUNT_OPTIONS="-osource=$src/scratch,allow_other,default_permissions${extra_scratch[$fs]}"
export TEST_FS_MOUNT_OPTS="-osource=$src/test,allow_other,default_permissions${extra_test[$fs]}"
export RESULT_BASE=$work/results-$fs
EOF
    # Tests raise these limits for themselves, up to the hard ones (where
    # this machine lets them be raised).
    (cd "$suite" && { ulimit -Hn "$(cat /proc/sys/fs/nr_open)" 2>/dev/null; ulimit -Hf unlimited 2>/dev/null; } ;
        ./check "${tests[@]}") >"$results/$fs.log" 2>&1 || true
    for m in "$mnt/test" "$mnt/scratch"; do
        mountpoint -q "$m" && umount "$m"
    done
    # Each failing test's output, for reading later.
    rm -rf "${results:?}/$fs" && cp -a "$work/results-$fs" "$results/$fs" 2>/dev/null || true
}

echo "== xfstests ${tests[*]} on ${fss[*]}, started $(date -u +%FT%TZ); logs in $results"
# One after the other: run at once, each disturbs the other's timing and
# probes.
for fs in "${fss[@]}"; do run_on "$fs"; done
for fs in "${fss[@]}"; do
    grep -E '^(Ran|Not run|Failures|Passed all)' "$results/$fs.log" | sed "s/^/$fs: /" || true
done

failed() { grep -E '^Failures:' "$results/$1.log" | sed 's/^Failures://' | tr ' ' '\n' | grep . | sort -u || true; }
# A run that never got to its tests (a mount that failed, an interrupted
# check) counts as failed, not as passed.
for fs in "${fss[@]}"; do
    if ! grep -q '^Ran: ' "$results/$fs.log" || grep -q '^Interrupted' "$results/$fs.log"; then
        echo "== $fs: the run did not complete (see $results/$fs.log)"
        exit 1
    fi
done
if [ ${#fss[@]} = 2 ]; then
    only_casafs=$(comm -23 <(failed casafs) <(failed passthrough_hp) | tr '\n' ' ')
    echo "== failing on casafs only: ${only_casafs:-none}"
    [ -z "$only_casafs" ] || exit 1
else
    [ -z "$(failed "${fss[0]}")" ] || exit 1
fi
