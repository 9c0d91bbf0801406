"""`agentctl status` must start fast: importing agentctl loads the control protocol, the
renderer and the stdlib only. Checked in a fresh interpreter, since this test process
has imported everything already."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("yaml", "httpx", "certifi", "vici", "prometheus_client", "pyroute2",
             "agent.config", "agent.adapters", "agent.daemon", "agent.doctor")


def modules_of_agentctl() -> list[str]:
    done = subprocess.run([sys.executable, "-c", "import agent.cli.agentctl, sys; print(sorted(sys.modules))"],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    return ast.literal_eval(done.stdout)


def test_importing_agentctl_loads_no_heavy_or_daemon_module():
    loaded = modules_of_agentctl()
    assert "agent.control.protocol" in loaded and "agent.cli.render" in loaded
    bad = [name for name in loaded if name in FORBIDDEN or name.startswith(tuple(f"{f}." for f in FORBIDDEN))]
    assert not bad, f"agentctl imports {bad}"


def test_agentctl_loads_nothing_of_the_agent_beyond_protocol_and_renderer():
    """Not even agent.core.snapshot: its dataclasses cost more than the rest of agentctl.
    The core's text helper (stdlib only) keeps terminals safe from what the agent relays."""
    loaded = modules_of_agentctl()
    assert [name for name in loaded if name.startswith("agent")] == [
        "agent", "agent.cli", "agent.cli.agentctl", "agent.cli.render", "agent.control", "agent.control.protocol",
        "agent.core", "agent.core.text"]
