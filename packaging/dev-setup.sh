#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) to run the lab demo and the tests:
# strongSwan (charon-systemd, swanctl, kernel-libipsec), keepalived (the HA lab's VRRP
# pair and the config test of config/keepalived.example.conf), network tools, Debian's kernel
# with QEMU and busybox for the kernel lab (a virtme-ng VM: route mode needs kernel ESP
# and XFRM interfaces), and a venv in .venv with the project, its test dependencies and
# the lab (tests/labkit: `space-vpn-lab`, virtme-ng among its dependencies). Safe to run
# again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  charon-systemd strongswan-swanctl libcharon-extra-plugins
  nftables iproute2 iputils-ping procps
  keepalived
  python3 python3-venv
  linux-image-amd64 qemu-system-x86 busybox-static
  prometheus
  dh-virtualenv debhelper dpkg-dev build-essential python3-dev
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian enables the strongSwan, keepalived and Prometheus services on install; the
# tests run their own charons, keepalived pairs (inside lab namespaces) and Prometheus
# servers. A host keepalived would add VIPs to the host itself.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now strongswan.service strongswan-starter.service keepalived.service \
    prometheus.service >/dev/null 2>&1 || true
fi

PYTHON=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# editable_mode=compat: a plain path entry instead of an import hook, which would add
# ~15 ms to the start of every Python process (agentctl's wall time included).
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
  -e '.[test]' -e tests/labkit
