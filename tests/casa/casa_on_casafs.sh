#!/usr/bin/env bash
# casa_on_casafs.sh - the real thing: CASA 6 from PyPI in working
# directories inside casafs mounts.
#
#   1. Its import leaves its log in the logs area only.
#   2. Its concat(copypointing=False) (concat_probe.py) works on TMPPOINTING
#      tables that live in the scratch area, and leaves nothing in the
#      working directory; the same concat in a plain directory is watched
#      the same way first, to show that the watch sees the tables land in
#      the working directory there (check_concat.py judges).
#   3. The same concat with the areas on another filesystem (a tmpfs here),
#      as in the production fstab line: renames into the working directory
#      answer EXDEV and shutil.move copies.
#   4. The same concat inside casafs mounted over a real NTFS volume
#      (ntfs-3g), the users' own backing.
#
# Usage: casa_on_casafs.sh [CASAFS_BINARY]
# Exit: 0 shown, 1 failed, 77 skipped (PyPI unreachable: CASA not installable).
set -u
BIN=${1:-target/release/casafs}
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d /tmp/casafs-casa.XXXXXX)
TREE=$T/tree
NTREE=$T/ntfs
XTREE=$T/apart
AREAS=$T/areas
PID=
NPID=
XPID=
NTFS_MOUNTED=
AREAS_MOUNTED=

# casafs TREE [OPTIONS] in the foreground, in the background: its pid in
# MOUNTED_PID.
mount_casafs() {
    "$BIN" mount "$1" "$1" -f ${2:+-o "$2"} 2>"$T/casafs-$(basename "$1").log" &
    MOUNTED_PID=$!
    for _ in $(seq 100); do
        [ -e "$1/.casafs/stats.json" ] && return 0
        sleep 0.1
    done
    echo "casafs did not mount on $1"
    cat "$T/casafs-$(basename "$1").log"
    return 1
}
# Unmounts casafs at $1 and waits for its daemon $2 to exit (it holds the
# directory beneath until then).
unmount_casafs() {
    [ -n "$2" ] || return 0
    umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null
    wait "$2" 2>/dev/null
}
cleanup() {
    unmount_casafs "$TREE" "$PID"
    unmount_casafs "$NTREE" "$NPID"
    unmount_casafs "$XTREE" "$XPID"
    [ -n "$AREAS_MOUNTED" ] && { umount "$AREAS" 2>/dev/null || umount -l "$AREAS"; }
    [ -n "$NTFS_MOUNTED" ] && { umount "$NTREE" 2>/dev/null || umount -l "$NTREE"; }
    rm -rf "$T"
}
trap cleanup EXIT

mkdir -p "$TREE/pipeline/scripts" "$TREE/pipeline/concat"
mount_casafs "$TREE" || exit 1
PID=$MOUNTED_PID

LOGPATH=$("$HERE/casa_import.sh" "$TREE/pipeline/scripts")
rc=$?
[ $rc -eq 77 ] && exit 77
[ $rc -eq 0 ] || { echo "CASA import failed ($rc)"; exit 1; }
NAME=$(basename "$LOGPATH")
echo "CASA reported its log as $LOGPATH"
echo "working directory listing: [$(ls -A "$TREE/pipeline/scripts")]"
echo "logs area: $(ls -l "$TREE/state/logs/casa/$NAME" 2>&1)"
fail=0
[ -z "$(ls -A "$TREE/pipeline/scripts")" ] || { echo "FAIL: the working directory is not clean"; fail=1; }
[ -s "$TREE/state/logs/casa/$NAME" ] || { echo "FAIL: the log is not in the logs area"; fail=1; }
grep -q "casa-logs" "$TREE/.casafs/redirects" || { echo "FAIL: no redirect recorded"; fail=1; }
grep -c INFO "$TREE/pipeline/scripts/$NAME" >/dev/null || { echo "FAIL: the original path does not read the log"; fail=1; }
[ $fail -eq 0 ] && echo "CASA run: the log landed in the logs area only"

# concat_probe.py in WORKDIR with SCRATCH as the area to look in; its report
# to REPORT. Fails the run if CASA fails.
concat_in() {
    local workdir=$1 scratch=$2 report=$3
    if ! SCRATCH="$scratch" "$HERE/casa_import.sh" "$workdir" "$HERE/concat_probe.py" \
            >"$report" 2>"$report.err"; then
        echo "FAIL: concat in $workdir"
        tail -5 "$report.err"
        return 1
    fi
    echo "concat in $workdir: $(cat "$report")"
}

# concat in the casafs mount at TREE, whose daemon's pid is in the variable
# named PIDVAR, looking for tables in SCRATCH; then the unmount, and what is
# on the disk beneath. Reports in $T/TAG.json and $T/TAG-stats.json.
concat_mounted() {
    local tree=$1 pidvar=$2 scratch=$3 tag=$4
    concat_in "$tree/pipeline/concat" "$scratch" "$T/$tag.json" || return 1
    cp "$tree/.casafs/stats.json" "$T/$tag-stats.json"
    unmount_casafs "$tree" "${!pidvar}"
    printf -v "$pidvar" '%s' ''
    echo "$tag, on disk after unmount: working directory" \
        "[$(ls -A "$tree/pipeline/concat" | tr '\n' ' ')], scratch area [$(ls -A "$scratch")]"
}

mkdir -p "$T/plain/work" "$T/plain/scratch"
concat_in "$T/plain/work" "$T/plain/scratch" "$T/plain.json" || exit 1
concat_mounted "$TREE" PID "$TREE/state/scratch/tmppointing" ext || exit 1

# The areas on another filesystem.
mkdir -p "$XTREE/pipeline/concat" "$AREAS"
mount -t tmpfs casafs-casa-areas "$AREAS" || { echo "FAIL: mount a tmpfs"; exit 1; }
AREAS_MOUNTED=1
mount_casafs "$XTREE" "logs=$AREAS/logs,scratch=$AREAS/tmppointing" || exit 1
XPID=$MOUNTED_PID
concat_mounted "$XTREE" XPID "$AREAS/tmppointing" apart || exit 1

# The same on casafs over NTFS through ntfs-3g.
mkdir -p "$NTREE"
truncate -s 256M "$T/ntfs.img"
mkntfs -F -q -f "$T/ntfs.img" >/dev/null 2>&1 || { echo "FAIL: mkntfs (is ntfs-3g installed?)"; exit 1; }
ntfs-3g "$T/ntfs.img" "$NTREE" || { echo "FAIL: ntfs-3g"; exit 1; }
NTFS_MOUNTED=1
mkdir -p "$NTREE/pipeline/concat"
mount_casafs "$NTREE" || exit 1
NPID=$MOUNTED_PID
concat_mounted "$NTREE" NPID "$NTREE/state/scratch/tmppointing" ntfs || exit 1

python3 "$HERE/check_concat.py" "$T/plain.json" \
    "$(findmnt -n -o FSTYPE --target "$T")" "$T/ext.json" "$T/ext-stats.json" "$TREE/pipeline/concat" "$TREE/state/scratch/tmppointing" \
    "areas on tmpfs" "$T/apart.json" "$T/apart-stats.json" "$XTREE/pipeline/concat" "$AREAS/tmppointing" \
    ntfs-3g "$T/ntfs.json" "$T/ntfs-stats.json" "$NTREE/pipeline/concat" "$NTREE/state/scratch/tmppointing" \
    || fail=1
[ $fail -eq 0 ] && echo "CASA run: concat's TMPPOINTING tables lived in the scratch area only, over $(findmnt -n -o FSTYPE --target "$T"), with the areas apart, and over NTFS"
exit $fail
