#!/usr/bin/env bash
# Build the Debian package (dh-virtualenv) into dist/: `bash packaging/build-deb.sh`.
# Needs: apt-get install dh-virtualenv debhelper dpkg-dev build-essential python3-dev
# python3-venv (packaging/dev-setup.sh installs them). Builds from a clean copy of the tree.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/space-vpn-agent-0.1.0"
mkdir -p "$src"
tar -C "$top" --exclude=.venv --exclude=.git --exclude=dist --exclude=bench-results \
    --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C "$src" -xf -
cp -r "$src/packaging/debian" "$src/debian"
cp "$src/systemd/space-vpn-agent.service" "$src/debian/space-vpn-agent.service"
(cd "$src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || { tail -40 "$work/build.log"; exit 1; }
mkdir -p "$top/dist"
cp "$work"/*.deb "$top/dist/"
ls "$top"/dist/*.deb
