"""The Debian package: one command builds it, its contents are what a gateway needs,
and it installs and runs (on this machine, as root; CI's machine is thrown away)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.package, pytest.mark.timeout(900)]


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "installing a package needs root"
    missing = [tool for tool in ("dpkg-buildpackage", "dh_virtualenv", "dpkg") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (packaging/dev-setup.sh installs them)" if missing else None


@pytest.fixture(scope="module")
def deb() -> Path:
    reason = unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    for old in (TOP / "dist").glob("space-vpn-agent_*.deb"):
        old.unlink()
    subprocess.run(["bash", str(TOP / "packaging" / "build-deb.sh")], check=True, capture_output=True, timeout=900)
    built = sorted((TOP / "dist").glob("space-vpn-agent_*.deb"))
    assert len(built) == 1
    return built[0]


def test_contents(deb):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout
    for path in ("./lib/systemd/system/space-vpn-agent.service", "./etc/space-vpn-agent/agent.example.yaml",
                 "./etc/space-vpn-agent/keepalived.example.conf",
                 "./usr/share/space-vpn-agent/monitoring/alerts.yml",
                 "./usr/share/space-vpn-agent/monitoring/dashboard.json",
                 "./opt/venvs/space-vpn-agent/bin/space-vpn-agent", "./usr/bin/space-vpn-agent", "./usr/bin/agentctl"):
        assert path in listing, path
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], check=True, capture_output=True, text=True).stdout
    assert "charon-systemd" in info and "strongswan-swanctl" in info
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], check=True, capture_output=True).stdout
    assert b"/etc/space-vpn-agent/agent.example.yaml" in conffiles
    assert b"/etc/space-vpn-agent/keepalived.example.conf" in conffiles


def test_leaves_the_lab_out(deb):
    """The lab (space_vpn_lab, with its fake Platform API) is test machinery: a gateway
    never gets it, nor the `space-vpn-lab` command."""
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout
    for needle in ("space_vpn_lab", "agent/lab", "fake_api", "space-vpn-lab"):
        hits = [line for line in listing.splitlines() if needle in line]
        assert not hits, f"{needle} in the package: {hits[:3]}"


def test_installs_and_runs(deb):
    subprocess.run(["dpkg", "-i", str(deb)], check=True, capture_output=True, timeout=300)
    try:
        version = subprocess.run(["/usr/bin/space-vpn-agent", "--version"], check=True, capture_output=True,
                                 text=True, env={"PATH": "/usr/bin:/bin"}).stdout
        assert version.startswith("space-vpn-agent ")
        usage = subprocess.run(["/usr/bin/agentctl", "--help"], check=True, capture_output=True, text=True).stdout
        assert "drain" in usage and "status" in usage
        assert stat.S_IMODE(os.stat("/etc/space-vpn-agent").st_mode) == 0o750
        assert not Path("/etc/space-vpn-agent/agent.yaml").exists()  # not started before it is configured
        # Before the agent ever ran: keepalived's track_file (ha.yield_file) needs its folder.
        assert stat.S_IMODE(os.stat("/var/lib/space-vpn-agent").st_mode) == 0o700
    finally:
        subprocess.run(["dpkg", "--purge", "space-vpn-agent"], capture_output=True, timeout=300)
    assert not Path("/var/lib/space-vpn-agent").exists()
