#!/usr/bin/env bash
# casa_on_casafs.sh - the real thing: CASA 6 from PyPI imported in a working
# directory inside a casafs mount leaves its log in the logs area only.
#
# Usage: casa_on_casafs.sh [CASAFS_BINARY]
# Exit: 0 shown, 1 failed, 77 skipped (PyPI unreachable: CASA not installable).
set -u
BIN=${1:-target/release/casafs}
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d /tmp/casafs-casa.XXXXXX)
TREE=$T/tree
mkdir -p "$TREE/pipeline/scripts"
"$BIN" mount "$TREE" "$TREE" -f 2>"$T/casafs.log" &
PID=$!
cleanup() {
    umount "$TREE" 2>/dev/null || umount -l "$TREE" 2>/dev/null
    wait "$PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
for _ in $(seq 100); do
    [ -e "$TREE/.casafs/stats.json" ] && break
    sleep 0.1
done
[ -e "$TREE/.casafs/stats.json" ] || { echo "casafs did not mount"; cat "$T/casafs.log"; exit 1; }

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
exit $fail
