"""The README's first command: `space-vpn-lab demo` brings the simulated Private Space
up, plays a silent maintenance of the active tunnel with the failover printed as it
happens, and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_demo_plays_a_maintenance_and_cleans_up():
    before = namespaces()
    done = subprocess.run([sys.executable, "-m", "space_vpn_lab.cli", "demo"], capture_output=True, text=True,
                          timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Both tunnels up" in out and "5/5 replies" in out
    dropped = re.search(r"far end: tunnel (\d) dropped without a word", out)
    assert dropped, out
    moved = re.search(r"(\d+\.\d+) s  agent: traffic moved from tunnel (\d) to tunnel (\d)", out)
    assert moved and moved.group(2) == dropped.group(1), out
    lost = re.search(r"traffic: (\d+) pings lost, (\d+) ms without replies", out)
    assert lost, out
    print(f"\ndemo: failover at {moved.group(1)} s, {lost.group(2)} ms without replies")
    assert f"tunnel {dropped.group(1)} re-initiated, the hot standby again" in out
    assert out.rstrip().endswith("Lab cleaned up.")
    assert namespaces() == before
    assert "HRKU-" not in out + done.stderr
