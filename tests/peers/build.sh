#!/usr/bin/env bash
# Builds the test peers from source into target/peers (or $CASAFS_PEERS):
#   target/peers/passthrough_hp   libfuse's example/passthrough_hp
#   target/peers/xfstests/        xfstests, ready to run on FUSE
# Usage: tests/peers/build.sh [passthrough_hp|xfstests|all]
# Sources: $LIBFUSE_SRC / $XFSTESTS_SRC (a directory or a .tar.gz), else the
# snapshots in $CASAFS_VENDOR, ../shared/vendor/ next to the repository, or
# /work/shared/vendor. Without a source, says so and exits 77 (skipped),
# never 0.
# Needs root for apt-get (the build dependencies of a fresh Debian).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${CASAFS_PEERS:-$root/target/peers}"
what="${1:-all}"
mkdir -p "$out"

say() { echo "peers: $*" >&2; }

need_pkgs() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
    fi
}

# The source of $1 (libfuse or xfstests) unpacked in $out/$1-src, from
# $2 (a directory or tarball) or the vendor snapshot; 77 when there is none.
unpack() {
    local name=$1 given=$2 src dst="$out/$1-src"
    if [ -n "$given" ]; then
        src=$given
    else
        src=""
        for dir in ${CASAFS_VENDOR:-} "$root/../shared/vendor" /work/shared/vendor; do
            src=$(ls "$dir/$name"-*.tar.gz 2>/dev/null | head -1 || true)
            [ -z "$src" ] || break
        done
    fi
    if [ -z "$src" ] || [ ! -e "$src" ]; then
        say "skipped $name: no source (set ${name^^}_SRC to a directory or .tar.gz)"
        return 77
    fi
    if [ -f "$dst/.from" ] && [ "$(cat "$dst/.from")" = "$src" ]; then
        return 0
    fi
    rm -rf "$dst" && mkdir -p "$dst"
    if [ -d "$src" ]; then
        cp -a "$src/." "$dst/"
    else
        tar xzf "$src" -C "$dst" --strip-components=1
    fi
    echo "$src" >"$dst/.from"
}

build_passthrough_hp() {
    [ -x "$out/passthrough_hp" ] && return 0
    unpack libfuse "${LIBFUSE_SRC:-}" || return $?
    need_pkgs meson ninja-build pkg-config liburing-dev gcc g++
    (
        cd "$out/libfuse-src"
        meson setup build -Dexamples=true -Dutils=false -Dtests=false >/dev/null
        ninja -C build example/passthrough_hp >/dev/null
    )
    # Linked against the libfuse built beside it: keep the library with it.
    cp "$out/libfuse-src/build/example/passthrough_hp" "$out/passthrough_hp.bin"
    cat >"$out/passthrough_hp" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$out/libfuse-src/build/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$out/passthrough_hp.bin" "\$@"
EOF
    chmod +x "$out/passthrough_hp"
    say "built $out/passthrough_hp"
}

build_xfstests() {
    [ -x "$out/xfstests/check" ] && [ -f "$out/xfstests/.built" ] && return 0
    unpack xfstests "${XFSTESTS_SRC:-}" || return $?
    need_pkgs xfslibs-dev uuid-dev libtool-bin automake autoconf make gcc libacl1-dev libaio-dev \
        libgdbm-dev libcap-dev liburing-dev xfsprogs attr acl quota bc psmisc fio e2fsprogs gawk
    rm -rf "$out/xfstests" && cp -a "$out/xfstests-src" "$out/xfstests"
    # xfstests reports a mount of type fuse.<subtype> as that type, which
    # its `check` then refuses as not the FSTYP it was given (fuse).
    sed -i "s|-e 's/fuse.ceph-fuse/ceph-fuse/'|-e 's/fuse.ceph-fuse/ceph-fuse/' -e 's/^fuse\\\\..*/fuse/'|" \
        "$out/xfstests/common/rc"
    grep -q "s/^fuse" "$out/xfstests/common/rc" || { say "could not adapt common/rc"; exit 1; }
    (cd "$out/xfstests" && make -j"$(nproc)" >"$out/xfstests-build.log" 2>&1) ||
        { tail -20 "$out/xfstests-build.log"; say "xfstests did not build"; exit 1; }
    touch "$out/xfstests/.built"
    say "built $out/xfstests"
}

rc=0
case $what in
    passthrough_hp) build_passthrough_hp || rc=$? ;;
    xfstests) build_xfstests || rc=$? ;;
    all)
        build_passthrough_hp || rc=$?
        build_xfstests || rc=$?
        ;;
    *) echo "usage: tests/peers/build.sh [passthrough_hp|xfstests|all]" >&2; exit 2 ;;
esac
exit $rc
