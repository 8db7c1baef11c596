#!/usr/bin/env bash
# casa_on_casafs.sh - the real thing: CASA 6 from PyPI in working
# directories inside a casafs mount. Its import leaves its log in the logs
# area only; its concat(copypointing=False) works on TMPPOINTING tables that
# live in the scratch area, and leaves nothing in the working directory. The
# same concat in a plain directory is watched the same way first, to show
# that the watch sees the tables land in the working directory there.
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

# concat, watched by concat_probe.py: first in a plain directory.
mkdir -p "$T/plain/work" "$T/plain/scratch" "$TREE/pipeline/concat"
PLAIN=$(SCRATCH="$T/plain/scratch" "$HERE/casa_import.sh" "$T/plain/work" \
    "$HERE/concat_probe.py" 2>"$T/plain.err") \
    || { echo "FAIL: concat in a plain directory"; tail -5 "$T/plain.err"; exit 1; }
echo "concat without casafs: $PLAIN"
ONCASAFS=$(SCRATCH="$TREE/state/scratch/tmppointing" "$HERE/casa_import.sh" \
    "$TREE/pipeline/concat" "$HERE/concat_probe.py" 2>"$T/casafs.err") \
    || { echo "FAIL: concat on casafs"; tail -5 "$T/casafs.err"; exit 1; }
echo "concat on casafs: $ONCASAFS"
STATS=$(cat "$TREE/.casafs/stats.json")
umount "$TREE" && wait "$PID"
echo "backing working directory after unmount: [$(ls -A "$TREE/pipeline/concat" | tr '\n' ' ')]"
echo "backing scratch area after unmount: [$(ls -A "$TREE/state/scratch/tmppointing")]"
python3 - "$PLAIN" "$ONCASAFS" "$STATS" "$TREE" <<'PY' || fail=1
import json, os, sys
plain, oncasafs, stats = (json.loads(a) for a in sys.argv[1:4])
tree = sys.argv[4]
bad = []
def check(ok, what):
    if not ok:
        bad.append(what)
# Both concats worked the same way (the data CASA wrote is the same).
for k in ("a_pointing_rows", "c_rows", "c_pointing_rows", "d_rows", "d_pointing_rows"):
    check(plain[k] == oncasafs[k], f"{k}: {oncasafs[k]} on casafs, {plain[k]} without")
check(plain["a_pointing_rows"] > 0, "the first MS has no pointing rows: concat's copy path not taken")
check(oncasafs["c_rows"] > 0 and oncasafs["d_rows"] > oncasafs["c_rows"], "concat did not add rows")
# Without casafs the watch sees the tables in the working directory...
check(len(plain["tables"]) == 2, "plain: concat opened no TMPPOINTING tables")
check(all(t["listed_in_cwd"] and not t["in_scratch"] for t in plain["tables"]),
      f"plain: {plain['tables']}")
# ...with casafs in the scratch area, unlisted in the working directory.
check(len(oncasafs["tables"]) == 2, "casafs: concat opened no TMPPOINTING tables")
check(all(t["in_scratch"] and not t["listed_in_cwd"] for t in oncasafs["tables"]),
      f"casafs: {oncasafs['tables']}")
check(stats["redirects"]["tmppointing"]["redirects"] == 2,
      f"casafs counted {stats['redirects']['tmppointing']['redirects']} TMPPOINTING redirects")
check(oncasafs["cwd"] == ["a.ms", "b.ms", "c.ms", "d.ms"], f"casafs cwd listing {oncasafs['cwd']}")
# On the disk beneath: nothing but the Measurement Sets.
on_disk = sorted(os.listdir(os.path.join(tree, "pipeline/concat")))
check(on_disk == ["a.ms", "b.ms", "c.ms", "d.ms"], f"backing working directory {on_disk}")
left = os.listdir(os.path.join(tree, "state/scratch/tmppointing"))
check(left == [], f"scratch area keeps {left}")
for b in bad:
    print("FAIL:", b)
sys.exit(1 if bad else 0)
PY
[ $fail -eq 0 ] && echo "CASA run: concat's TMPPOINTING tables lived in the scratch area only"
exit $fail
