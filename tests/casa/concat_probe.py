"""CASA's own concat(copypointing=False) on two small simulated Measurement
Sets in the working directory, watched from outside.

concat moves <ms>/POINTING to TMPPOINTING<time> in the working directory,
opens it as a table, then either copies it back empty and removes it, or
(when it is already empty, as in the second concat here) moves it back.
Every time CASA opens such a table, the probe notes where it is at that
moment: whether the same object is in the area named by the SCRATCH
environment variable (a path inside the mount, or the area's own path on
another filesystem), and whether the working directory lists it.

Prints one JSON object on stdout; exits non-zero if CASA fails.
Run it through casa_import.sh (offline CASA configuration).
"""

import json
import os

import casatools
from casatasks import concat

SCRATCH = os.environ["SCRATCH"]
seen = []
_open = casatools.table.open


def same_object(a, b):
    if a.st_dev == b.st_dev:
        return a.st_ino == b.st_ino
    # Through the mount, an object on another filesystem has a number of
    # casafs's own: compare its type, link count and times instead, which
    # casafs passes on as they are.
    key = ("st_mode", "st_nlink", "st_mtime_ns", "st_ctime_ns")
    return all(getattr(a, k) == getattr(b, k) for k in key)


def watching_open(self, tablename="", *args, **kwargs):
    name = os.path.basename(str(tablename).rstrip("/"))
    if name.startswith("TMPPOINTING"):
        here = os.stat(tablename)
        there = os.path.join(SCRATCH, name)
        # The same object seen two ways: through the mount, and in the area
        # itself, which may be on another filesystem (another st_dev).
        in_scratch = os.path.exists(there) and same_object(here, os.stat(there))
        seen.append(
            {
                "table": name,
                "in_scratch": in_scratch,
                "listed_in_cwd": name in os.listdir("."),
            }
        )
    return _open(self, tablename, *args, **kwargs)


casatools.table.open = watching_open


def simulate(name, start):
    me = casatools.measures()
    sm = casatools.simulator()
    sm.open(name)
    sm.setconfig(
        telescopename="VLA",
        x=[0.0, 30.0, 60.0, 0.0],
        y=[0.0, 0.0, 0.0, 40.0],
        z=[0.0] * 4,
        dishdiameter=[25.0] * 4,
        mount=["alt-az"] * 4,
        antname=["A1", "A2", "A3", "A4"],
        coordsystem="local",
        referencelocation=me.observatory("VLA"),
    )
    sm.setspwindow(
        spwname="s0",
        freq="1.4GHz",
        deltafreq="1MHz",
        freqresolution="1MHz",
        nchannels=4,
        stokes="RR LL",
    )
    sm.setfeed(mode="perfect R L")
    sm.setfield(
        sourcename="src", sourcedirection=me.direction("J2000", "12h00m00", "40d00m00")
    )
    sm.setlimits(shadowlimit=0.001, elevationlimit="8.0deg")
    sm.setauto(autocorrwt=0.0)
    sm.settimes(
        integrationtime="10s",
        usehourangle=False,
        referencetime=me.epoch("UTC", start),
    )
    sm.observe("src", "s0", starttime="0s", stoptime="120s")
    sm.close()


def rows(table):
    tb = casatools.table()
    tb.open(table)
    n = tb.nrows()
    tb.close()
    return n


simulate("a.ms", "2020/01/01/12:00:00")
simulate("b.ms", "2020/01/01/14:00:00")
result = {"a_pointing_rows": rows("a.ms/POINTING")}
# a.ms has pointing rows: the table is copied back empty and removed.
concat(vis=["a.ms", "b.ms"], concatvis="c.ms", copypointing=False)
# c.ms has none: the table is moved back as it is.
concat(vis=["c.ms", "b.ms"], concatvis="d.ms", copypointing=False)
for ms in ("c.ms", "d.ms"):
    result[ms[0] + "_rows"] = rows(ms)
    result[ms[0] + "_pointing_rows"] = rows(ms + "/POINTING")
result["tables"] = seen
result["cwd"] = sorted(os.listdir("."))
print(json.dumps(result))
