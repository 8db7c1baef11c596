#!/usr/bin/env bash
# install.sh - build and install casafs from source, with its systemd units
# and docs (the Debian package is mount-scripts/build-deb.sh).
# Usage (as root, from the repository):
#   mount-scripts/install.sh [PREFIX]              install (PREFIX: /usr/local)
#   mount-scripts/install.sh --uninstall [PREFIX]  remove what install put there
#                                                  (keeps /etc/casafs)
set -euo pipefail
cd "$(dirname "$0")/.."
uninstall=
if [ "${1:-}" = "--uninstall" ]; then
    uninstall=1
    shift
fi
PREFIX=${1:-/usr/local}
units=/etc/systemd/system
if [ -n "$uninstall" ]; then
    rm -f "$PREFIX/bin/casafs" "$units/casafs.service" "$units/casafs@.service"
    rm -rf "$PREFIX/share/doc/casafs"
    rm -f "$PREFIX"/share/man/man8/casafs*.8
    command -v systemctl >/dev/null && systemctl daemon-reload || true
    echo "removed casafs from $PREFIX (configuration in /etc/casafs kept)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
dpkg -s fuse3 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq fuse3; }
cargo build --release
install -D -m 0755 target/release/casafs "$PREFIX/bin/casafs"
# The units name the binary and the docs where this PREFIX put them.
for unit in casafs.service casafs@.service; do
    sed "s|/usr/local|$PREFIX|g" "mount-scripts/$unit" > "target/$unit"
    install -D -m 0644 "target/$unit" "$units/$unit"
done
[ -e /etc/casafs/casafs.env ] || install -D -m 0644 mount-scripts/casafs.env /etc/casafs/casafs.env
[ -e /etc/casafs/casafs.toml ] || install -D -m 0644 mount-scripts/casafs.toml /etc/casafs/casafs.toml
for f in mount-scripts/OPERATIONS.md mount-scripts/fstab.example mount-scripts/grafana-dashboard.json; do
    install -D -m 0644 "$f" "$PREFIX/share/doc/casafs/$(basename "$f")"
done
"$PREFIX/bin/casafs" generate man "$PREFIX/share/man/man8"
# Root needs no user_allow_other in /etc/fuse.conf: casafs mounts as root.
command -v systemctl >/dev/null && systemctl daemon-reload || true
echo "installed $PREFIX/bin/casafs ($("$PREFIX/bin/casafs" -V))"
echo "next: see $PREFIX/share/doc/casafs/OPERATIONS.md (systemctl enable --now casafs@..., or the fstab line)"
