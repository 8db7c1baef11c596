#!/usr/bin/env bash
# casa_import.sh - import CASA 6 (casatasks) fully offline inside WORKDIR,
# or run a Python script with CASA there.
#
# Usage: casa_import.sh WORKDIR [SCRIPT [ARG...]]
#
#   1. Ensures a venv with casatools, casatasks, casadata and six exists at
#      ${CASA_VENV:-/root/casa-venv}; creates it / pip-installs from PyPI if
#      missing.  If that is impossible (no python venv support, PyPI
#      unreachable, ...) it prints ONE line on stderr and exits 77 (the
#      conventional "skipped" status).
#   2. Writes a CASA site config (CASASITECONFIG) into a private temp dir that
#      points measurespath/datapath at the casadata package's bundled data and
#      disables all measures/data auto-updates, so nothing is downloaded.
#   3. Runs, with cwd = WORKDIR, an isolated HOME (no ~/.casa/config.py, no
#      ~/.cache or ~/.config pollution) and the site config:
#          python -c 'import casatasks; print(casatasks.casalog.logfile())'
#      CASA creates its log file casa-YYYYMMDD-HHMMSS.log (UTC time) in the
#      cwd at import time; the absolute path is printed on stdout.
#      With SCRIPT: python SCRIPT ARG... instead, in the same environment.
#   4. Exits with Python's exit status.
#
# Environment:
#   CASA_VENV       venv location (default /root/casa-venv)
#   CASA_PYTHON     interpreter used to create the venv (default python3)
#   CASA_PIP_ARGS   extra args for pip install (e.g. an index URL)
#
# The temp dir holding the site config and fake HOME is removed on exit;
# WORKDIR is never cleaned (the caller inspects the casa-*.log there).
set -u

skip() { echo "casa_import.sh: SKIP: $*" >&2; exit 77; }

if [ $# -lt 1 ]; then
    echo "usage: $0 WORKDIR [SCRIPT [ARG...]]" >&2
    exit 2
fi
WORKDIR=$1
shift
if [ ! -d "$WORKDIR" ]; then
    echo "casa_import.sh: WORKDIR '$WORKDIR' is not a directory" >&2
    exit 2
fi

VENV=${CASA_VENV:-/root/casa-venv}
BASEPY=${CASA_PYTHON:-python3}
PY=$VENV/bin/python
PKGS="casatools casatasks casadata six"

# Cheap check (no heavy import): are all packages installed in the venv?
have_pkgs() {
    [ -x "$PY" ] && "$PY" -c '
import sys, importlib.util as u
sys.exit(0 if all(u.find_spec(m) for m in ("casatools","casatasks","casadata","casaconfig","six")) else 1)' \
        >/dev/null 2>&1
}

ensure_venv() {
    have_pkgs && return 0
    if [ ! -x "$PY" ]; then
        command -v "$BASEPY" >/dev/null 2>&1 || skip "no $BASEPY to create venv $VENV"
        "$BASEPY" -m venv "$VENV" >/dev/null 2>&1 || skip "cannot create venv at $VENV"
    fi
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/casa-pip.XXXXXX")
    # shellcheck disable=SC2086
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q --timeout 30 --retries 2 \
            ${CASA_PIP_ARGS:-} $PKGS >"$log" 2>&1; then
        local last
        last=$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200)
        rm -f "$log"
        skip "pip install $PKGS into $VENV failed (PyPI unreachable?): $last"
    fi
    rm -f "$log"
    have_pkgs || skip "packages still not importable in $VENV after pip install"
}

# Serialise venv creation between concurrent CI jobs when flock is available.
mkdir -p "$(dirname "$VENV")" 2>/dev/null || skip "cannot create parent dir of $VENV"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock" || skip "cannot open lock file $VENV.lock"
    flock 9 || skip "cannot lock $VENV.lock"
    ensure_venv
    flock -u 9
    exec 9>&-
else
    ensure_venv
fi

MEASURES=$("$PY" -c 'import casadata; print(casadata.datapath)' 2>/dev/null) \
    || skip "cannot locate casadata.datapath in $VENV"
[ -d "$MEASURES/geodetic/IERSeop2000" ] || skip "casadata has no geodetic/IERSeop2000 under $MEASURES"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/casa-import.XXXXXX") || skip "mktemp failed"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/home" "$TMP/xdg-cache" "$TMP/xdg-config"
SITECONFIG=$TMP/casasiteconfig.py

# Keys are those of casaconfig/private/config_defaults_static.py.
cat >"$SITECONFIG" <<EOF
# CASA site config written by casa_import.sh -- offline, no auto updates
measurespath = "$MEASURES"
datapath = [ "$MEASURES" ]
measures_auto_update = False
data_auto_update = False
skipnetworkcheck = True
casaconfig_verbose = 1
nologger = True
nogui = True
agg = True
log2term = False
EOF

if [ $# -gt 0 ]; then
    RUN=("$@")
else
    RUN=(-c 'import casatasks; print(casatasks.casalog.logfile())')
fi
cd "$WORKDIR" || { echo "casa_import.sh: cannot cd to $WORKDIR" >&2; exit 2; }

# Not exec'd, so the EXIT trap still removes $TMP; exit with Python's status.
env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP \
    HOME="$TMP/home" \
    XDG_CACHE_HOME="$TMP/xdg-cache" \
    XDG_CONFIG_HOME="$TMP/xdg-config" \
    MPLCONFIGDIR="$TMP/xdg-config/matplotlib" \
    MPLBACKEND=Agg \
    PYTHONNOUSERSITE=1 \
    CASASITECONFIG="$SITECONFIG" \
    "$PY" "${RUN[@]}"
status=$?
exit $status
