#!/usr/bin/env bash
# build-deb.sh - make the Debian package of casafs.
# Usage (from the repository): mount-scripts/build-deb.sh [BINARY] [OUTDIR]
#   BINARY: the casafs to package (default: target/release/casafs, built
#           with cargo if missing); OUTDIR: where the .deb goes (default: target/deb)
# Needs dpkg-deb, strip, and fakeroot (or root). The Maintainer field is
# DEBFULLNAME <DEBEMAIL> when set. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/casafs}
out=${2:-target/deb}
if [ ! -x "$bin" ]; then
    cargo build --release
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$bin" "$stage/usr/bin/casafs"
# Debug information stays in the build tree, not in the package.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/casafs"
for unit in casafs.service casafs@.service; do
    sed 's|/usr/local/bin/casafs|/usr/bin/casafs|; s|/usr/local/share/doc/casafs|/usr/share/doc/casafs|' \
        "mount-scripts/$unit" > "$stage/unit"
    install -D -m 0644 "$stage/unit" "$stage/lib/systemd/system/$unit"
    rm "$stage/unit"
done
"$bin" generate man "$stage/man"
for page in "$stage"/man/*.8; do
    gzip -9n < "$page" > "$page.gz"
    install -D -m 0644 "$page.gz" "$stage/usr/share/man/man8/$(basename "$page").gz"
done
rm -r "$stage/man"
"$bin" generate completions "$stage/comp"
install -D -m 0644 "$stage/comp/casafs.bash" "$stage/usr/share/bash-completion/completions/casafs"
install -D -m 0644 "$stage/comp/_casafs" "$stage/usr/share/zsh/vendor-completions/_casafs"
install -D -m 0644 "$stage/comp/casafs.fish" "$stage/usr/share/fish/vendor_completions.d/casafs.fish"
rm -r "$stage/comp"
install -D -m 0644 mount-scripts/casafs.env "$stage/etc/casafs/casafs.env"
install -D -m 0644 mount-scripts/casafs.toml "$stage/etc/casafs/casafs.toml"
doc="$stage/usr/share/doc/casafs"
for f in README.md mount-scripts/OPERATIONS.md mount-scripts/fstab.example mount-scripts/grafana-dashboard.json; do
    install -D -m 0644 "$f" "$doc/$(basename "$f")"
done
maintainer=${DEBFULLNAME:-casafs maintainers}" <${DEBEMAIL:-casafs@example.org}>"
printf 'casafs %s\n\nCopyright (C) 2026 the casafs authors.\nNo license is declared in the repository yet; ask its maintainers.\n' \
    "$version" > "$doc/copyright"
# A native package's changelog: this build.
printf 'casafs (%s) unstable; urgency=medium\n\n  * Built from the casafs repository.\n\n -- %s  %s\n' \
    "$version" "$maintainer" "$(date -R)" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

mkdir -p "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: casafs
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: fuse3, libc6
Section: admin
Priority: optional
Description: FUSE overlay that keeps CASA debris out of a data tree
 casafs mounts over a data tree (usually over itself) and passes everything
 through, except that casa-*.log files land in a logs area, TMPPOINTING*
 tables land in scratch, and unlinking a file that is still open never
 leaves .fuse_hidden* files behind.
CONTROL
printf '/etc/casafs/casafs.env\n/etc/casafs/casafs.toml\n' > "$stage/DEBIAN/conffiles"
# systemd learns of the units; nothing is enabled or started by itself.
for script in postinst postrm; do
    cat > "$stage/DEBIAN/$script" <<'SCRIPT'
#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
SCRIPT
    chmod 0755 "$stage/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/casafs_${version}_${arch}.deb"
if [ "$(id -u)" = 0 ]; then
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
else
    fakeroot dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
fi
echo "$deb"
