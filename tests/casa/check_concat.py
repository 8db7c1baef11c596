"""Judges the concat runs of casa_on_casafs.sh.

Usage: check_concat.py PLAIN_JSON [LABEL RUN_JSON STATS_JSON WORKDIR SCRATCH]...

PLAIN_JSON is concat_probe.py's report from a plain directory; each LABEL
group is a run inside a casafs mount: the probe's report, the mount's
stats.json, and, looked at after the unmount, the working directory and the
scratch area on the disk beneath. Prints each failure; exits 1 if any.
"""

import json
import os
import sys

MEASUREMENT_SETS = ["a.ms", "b.ms", "c.ms", "d.ms"]
bad = []


def check(ok, what):
    if not ok:
        bad.append(what)


def load(path):
    with open(path) as f:
        return json.load(f)


plain = load(sys.argv[1])
# The watch can tell: without casafs the tables are in the working directory.
check(plain["a_pointing_rows"] > 0, "the first MS has no pointing rows: concat's copy path not taken")
check(len(plain["tables"]) == 2, f"plain: concat opened {len(plain['tables'])} TMPPOINTING tables, not 2")
check(
    all(t["listed_in_cwd"] and not t["in_scratch"] for t in plain["tables"]),
    f"plain: {plain['tables']}",
)

runs = sys.argv[2:]
check(runs and len(runs) % 5 == 0, "no casafs run to judge")
for i in range(0, len(runs) - 4, 5):
    label, report, stats, workdir, scratch = runs[i : i + 5]
    run, stats = load(report), load(stats)
    # CASA wrote the same data as without casafs.
    for k in ("a_pointing_rows", "c_rows", "c_pointing_rows", "d_rows", "d_pointing_rows"):
        check(run[k] == plain[k], f"{label}: {k} is {run[k]}, {plain[k]} without casafs")
    check(len(run["tables"]) == 2, f"{label}: concat opened {len(run['tables'])} TMPPOINTING tables, not 2")
    # Each table was in the scratch area while CASA had it open, and the
    # working directory's listing did not show it.
    check(
        all(t["in_scratch"] and not t["listed_in_cwd"] for t in run["tables"]),
        f"{label}: {run['tables']}",
    )
    routed = stats.get("redirects", {}).get("tmppointing", {}).get("redirects", 0)
    check(routed == 2, f"{label}: {routed} TMPPOINTING redirects counted, not 2")
    check(run["cwd"] == MEASUREMENT_SETS, f"{label}: working directory lists {run['cwd']}")
    # On the disk beneath: the Measurement Sets only, and nothing left over.
    on_disk = sorted(os.listdir(workdir))
    check(on_disk == MEASUREMENT_SETS, f"{label}: working directory on disk holds {on_disk}")
    left = os.listdir(scratch)
    check(left == [], f"{label}: scratch area on disk keeps {left}")

for b in bad:
    print("FAIL:", b)
sys.exit(1 if bad else 0)
