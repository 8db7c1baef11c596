#!/usr/bin/env bash
# The test command: installs what a fresh Debian machine lacks for the
# suite, then runs it. Needs root (the tests mount filesystems and switch
# to the unprivileged user `tests`). Arguments go to cargo nextest, e.g.
#   tests/run.sh --test security
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run it as root (the tests mount filesystems)" >&2
    exit 2
fi

# fuse3: mount.fuse3 and fusermount3; ntfs-3g: the users' backing; attr
# and acl: getfattr/setfattr and getfacl/setfacl; stress-ng: load for
# the races; e2fsprogs: an ext4 volume with blocks reserved for root;
# systemd: systemd-analyze for the units; man-db and lintian: the
# manual pages and the Debian package.
missing=()
for pkg in fuse3 ntfs-3g attr acl stress-ng e2fsprogs util-linux python3 systemd man-db lintian; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The unprivileged user the multi-user tests and pjdfstest switch to.
id tests >/dev/null 2>&1 || echo 'tests:x:::casafs test user:/:/usr/sbin/nologin' | newusers
getent group nogroup >/dev/null || groupadd -g 65534 nogroup
python3 -c "import prometheus_client" 2>/dev/null || python3 -m pip install -q prometheus_client
for tool in pjdfstest fsx cargo-nextest; do
    command -v "$tool" >/dev/null || cargo install --locked -q "$tool"
done

cargo nextest run --release "$@"

# With no arguments (the whole suite, as CI runs it): a bounded subset of
# xfstests' generic group on casafs, about four minutes: file handles,
# set-ID bits, a removed working directory, access times, O_TMPFILE,
# permissions, and others. tests/peers/xfstests.sh runs the whole quick
# group on casafs and passthrough_hp side by side (README, Conformance).
if [ $# -eq 0 ]; then
    subset=(generic/001 generic/002 generic/003 generic/004 generic/005 generic/006
        generic/007 generic/011 generic/013 generic/014 generic/023 generic/024 generic/028
        generic/035 generic/053 generic/069 generic/070 generic/071 generic/075 generic/084
        generic/086 generic/087 generic/088 generic/091 generic/117 generic/123 generic/124
        generic/126 generic/128 generic/131 generic/184 generic/193 generic/198 generic/207
        generic/210 generic/221 generic/236 generic/237 generic/257 generic/263 generic/286 generic/294
        generic/306 generic/315 generic/337 generic/355 generic/360 generic/389 generic/426 generic/430
        generic/436 generic/437 generic/452 generic/467 generic/477 generic/504 generic/586 generic/591
        generic/597 generic/598 generic/633 generic/637 generic/756 generic/777)
    rc=0
    tests/peers/xfstests.sh --only casafs "${subset[@]}" || rc=$?
    case $rc in
        0) echo "xfstests subset: ${#subset[@]} tests, none failed" ;;
        77) echo "xfstests subset: SKIPPED (no xfstests source; see tests/peers/build.sh)" ;;
        *)
            echo "xfstests subset: failed (target/peers/results/casafs.log)"
            exit 1
            ;;
    esac
fi
