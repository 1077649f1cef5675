#!/usr/bin/env bash
# Builds the tiny image the Docker tests run, from local files only (no registry):
# a root file system holding the static busybox and its applet links, imported with
# `docker import`. Idempotent: does nothing when the image exists.
#
#   packaging/test-image.sh [IMAGE]        # default dynserv-test/busybox:latest
#
# Needs Debian's busybox-static (scripts/test.sh installs it).
set -euo pipefail

image="${1:-dynserv-test/busybox:latest}"
if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
busybox="${BUSYBOX:-/bin/busybox}"
if ! [ -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    echo "error: $busybox is not a static busybox; install busybox-static (apt-get install -y busybox-static)" >&2
    exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/bin "$root"/tmp "$root"/etc "$root"/data "$root"/root
chmod 1777 "$root"/tmp
cp "$busybox" "$root"/bin/busybox
for applet in $("$root"/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root"/etc/passwd
echo 'root:x:0:' >"$root"/etc/group
tar -C "$root" --numeric-owner -c . |
    docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$image" >/dev/null
echo "built $image"
