"""The systemd unit: `systemd-analyze verify` is clean and `systemd-analyze security`
rates its exposure at 1.9 or better (offline, no running systemd needed); no core file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.tools import required_tool

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "space-vpn-agent.service"


@pytest.fixture
def analyze() -> str:
    return required_tool("systemd-analyze", "systemd")


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's script (verify wants it to exist)."""
    script = Path(sys.executable).parent / "space-vpn-agent"
    text = UNIT.read_text().replace("/usr/bin/space-vpn-agent", str(script))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_verify_is_clean(analyze, unit_here):
    result = subprocess.run([analyze, "verify", str(unit_here)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if UNIT.name in line or "space-vpn-agent" in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


def test_security_exposure_is_at_most_1_9(analyze):
    result = subprocess.run([analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                            timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:]
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) <= 1.9


def test_the_unit_keeps_its_contract():
    text = UNIT.read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "After=strongswan.service",
                      "Wants=strongswan.service network-online.target", "LoadCredential=heroku-token:",
                      "StateDirectory=space-vpn-agent", "RuntimeDirectory=space-vpn-agent",
                      "ConfigurationDirectory=space-vpn-agent", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "SystemCallFilter=@system-service"):
        assert directive in text, directive


def test_no_core_file_can_hold_the_secrets():
    """A watchdog kill sends SIGABRT: with LimitCORE=0 it writes no core holding the token or PSKs."""
    directives = [line.strip() for line in UNIT.read_text().splitlines()]
    assert "LimitCORE=0" in directives
    assert not [line for line in directives if line.startswith("LimitCORE=") and line != "LimitCORE=0"]
