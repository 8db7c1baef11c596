#!/usr/bin/env bash
# install.sh - build and install casafs, its systemd unit and docs.
# Usage (as root, from the repository): mount-scripts/install.sh [PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-/usr/local}
export DEBIAN_FRONTEND=noninteractive
dpkg -s fuse3 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq fuse3; }
cargo build --release
install -D -m 0755 target/release/casafs "$PREFIX/bin/casafs"
install -D -m 0644 mount-scripts/casafs.service /etc/systemd/system/casafs.service
install -D -m 0644 mount-scripts/casafs@.service /etc/systemd/system/casafs@.service
[ -e /etc/casafs/casafs.env ] || install -D -m 0644 mount-scripts/casafs.env /etc/casafs/casafs.env
install -D -m 0644 mount-scripts/OPERATIONS.md "$PREFIX/share/doc/casafs/OPERATIONS.md"
install -D -m 0644 mount-scripts/fstab.example "$PREFIX/share/doc/casafs/fstab.example"
# Let non-root users mount with allow_other if they ever need to.
grep -q '^user_allow_other' /etc/fuse.conf 2>/dev/null || echo user_allow_other >> /etc/fuse.conf
command -v systemctl >/dev/null && systemctl daemon-reload || true
echo "installed $PREFIX/bin/casafs ($("$PREFIX/bin/casafs" --version))"
echo "next: edit /etc/casafs/casafs.env, then 'systemctl enable --now casafs' (or add the fstab line)"
