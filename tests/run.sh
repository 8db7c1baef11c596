#!/usr/bin/env bash
# The test command: installs what a fresh Debian machine lacks for the
# suite, then runs it. Needs root (the tests mount filesystems and switch
# to the unprivileged user `tests`). Arguments go to cargo nextest, e.g.
#   tests/run.sh --test security
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run it as root (the tests mount filesystems)" >&2
    exit 2
fi

# fuse3: mount.fuse3 and fusermount3; ntfs-3g: the users' backing; attr
# and acl: getfattr/setfattr and getfacl/setfacl; stress-ng: load for
# the races; e2fsprogs: an ext4 volume with blocks reserved for root;
# systemd: systemd-analyze for the units; man-db and lintian: the
# manual pages and the Debian package.
missing=()
for pkg in fuse3 ntfs-3g attr acl stress-ng e2fsprogs util-linux python3 systemd man-db lintian; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The unprivileged user the multi-user tests and pjdfstest switch to.
id tests >/dev/null 2>&1 || echo 'tests:x:::casafs test user:/:/usr/sbin/nologin' | newusers
getent group nogroup >/dev/null || groupadd -g 65534 nogroup
python3 -c "import prometheus_client" 2>/dev/null || python3 -m pip install -q prometheus_client
for tool in pjdfstest fsx cargo-nextest; do
    command -v "$tool" >/dev/null || cargo install --locked -q "$tool"
done

exec cargo nextest run --release "$@"
