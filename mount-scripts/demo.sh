#!/usr/bin/env bash
# demo.sh - casafs doing its job on a throw-away demo tree.
#
# Builds casafs, mounts a demo tree over itself, plays the three kinds of
# debris (a CASA log, a TMPPOINTING table, an unlink of an open file),
# shows where everything went, prints the statistics and unmounts.
# Run as root (mounting needs it).  Usage: mount-scripts/demo.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
BIN=$PWD/target/release/casafs
DEMO=${1:-/tmp/casafs-demo}
TREE=$DEMO/tree
rm -rf "$DEMO"
mkdir -p "$TREE/repo/scripts" "$TREE/obs/2026-11-21.ms/POINTING"
echo "pointing rows" > "$TREE/obs/2026-11-21.ms/POINTING/table.f0"
echo "print('hello')" > "$TREE/repo/scripts/image.py"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "mount $TREE over itself"
"$BIN" mount "$TREE" "$TREE"
trap 'umount "$TREE" 2>/dev/null || true' EXIT
grep " $TREE " /proc/mounts

say "1. a script creates its CASA log in its working directory (as 'import casatasks' does)"
cd "$TREE/repo/scripts"
python3 - <<'PY'
import os, time
name = time.strftime("casa-%Y%m%d-%H%M%S.log", time.gmtime())
f = open(name, "a"); f.write("INFO casa started\n"); f.flush()
for _ in range(3):                      # CASA reopens the log by path
    g = open(os.path.abspath(name), "a"); g.seek(0, 2); g.write("INFO more\n"); g.close()
print("the script wrote", name, "and can read it back:", open(name).read().count("\n"), "lines")
PY
echo "ls repo/scripts:        $(ls -A)"
echo "ls state/logs/casa:     $(ls -A "$TREE/state/logs/casa")"

say "2. concat(copypointing=False) moves <ms>/POINTING to TMPPOINTING<time> in the cwd"
cd "$TREE/obs"
python3 -c "import shutil; shutil.move('2026-11-21.ms/POINTING', 'TMPPOINTING1763700000.5')"
echo "ls obs:                 $(ls -A)"
echo "ls state/scratch/...:   $(ls -A "$TREE/state/scratch/tmppointing")"
echo "read through the original path: $(cat TMPPOINTING1763700000.5/table.f0)"

say "3. a worker unlinks a file it still has open"
python3 - <<'PY'
import os
f = open("big.tmp", "w+"); f.write("x" * (1 << 20)); f.flush()
os.unlink("big.tmp")
print("after unlink, names in obs:", sorted(os.listdir(".")), "- the open file still reads", len(open(f"/proc/self/fd/{f.fileno()}").read()), "bytes")
PY

say "where it all came from (.casafs/redirects)"
cat "$TREE/.casafs/redirects"

say "casafs stats $TREE"
"$BIN" stats "$TREE"

say "unmount"
cd /
umount "$TREE"
trap - EXIT
sleep 0.5
echo "after unmount, the backing tree: $(cd "$TREE" && find . -path ./state -prune -o -print | sort | tr '\n' ' ')"
