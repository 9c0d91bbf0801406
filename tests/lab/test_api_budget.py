"""The Platform API budget in the lab: when the fake's RateLimit-Remaining goes low the
agent spaces its calls out as the budget rule says (measured at the fake), and
`agentctl status`, /metrics and the log say so; once the pool refills it polls at its
interval again. The tunnels are not touched by any of it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from agent.core.api_budget import SECONDS_PER_CALL_AT_ONE_LEFT
from space_vpn_lab.agent_process import is_redundant
from tests.lab.helpers import BRINGUP_TIMEOUT
from tests.lab.test_metrics_lab import METRICS_PORT, scrape

pytestmark = pytest.mark.lab

LOW = 900  # below the rule's threshold: 8000 / 900 = 8.9 s between calls instead of 1 s


def gaps_after(fake_api, since: float, count: int, timeout: float) -> list[float]:
    """The spacing of the first `count + 1` requests the fake answered after `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = [t for t in fake_api.request_times if t >= since]
        if len(times) > count:
            return [b - a for a, b in zip(times, times[1:count + 1])]
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {count + 1} requests in {timeout:g} s")


def agentctl_status(agent) -> str:
    run = subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, "status"],
                         capture_output=True, text=True, timeout=10, check=False)
    return run.stdout


def test_a_low_budget_stretches_polling_and_status_and_metrics_say_so(lab, make_agent, fake_api):
    agent = make_agent(poll_interval="1s")
    config = yaml.safe_load(agent.config_path.read_text())
    config["metrics"] = {"listen": f"127.0.0.1:{METRICS_PORT}"}
    agent.write_config(config)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)

    # A full pool: one call a second, as configured.
    full = gaps_after(fake_api, time.monotonic(), 3, 10)
    assert all(0.8 <= gap <= 1.8 for gap in full), full
    assert "Platform API budget: 4" in agentctl_status(agent)  # 44xx calls left
    assert scrape(lab.topology.cust_ns)["space_vpn_api_poll_stretched", ()] == 0

    # The owner's other tools drain the pool: it only goes down now, one token a call.
    fake_api.set_rate_limit(LOW, refill_per_minute=0)
    status = agent.wait_for(lambda s: (s["api_budget"] or {}).get("stretched"), 10)
    assert status["api_budget"]["remaining"] < LOW
    stretched = gaps_after(fake_api, time.monotonic(), 1, 30)
    expected = SECONDS_PER_CALL_AT_ONE_LEFT / LOW  # 8.9 s; the pool shrinks by 1 a call
    assert all(expected - 0.5 <= gap <= expected + 1.5 for gap in stretched), (stretched, expected)

    text = agentctl_status(agent)
    line = next(line for line in text.splitlines() if line.startswith("Platform API budget:"))
    assert "calls left, polling stretched to 8.9 s (normally 1 s)" in line, line
    samples = scrape(lab.topology.cust_ns)
    assert samples["space_vpn_api_poll_stretched", ()] == 1
    assert LOW - 10 < samples["space_vpn_api_rate_limit_remaining", ()] < LOW
    assert samples["space_vpn_api_poll_interval_seconds", ()] == pytest.approx(expected, abs=0.2)
    assert "Platform API budget low" in agent.log_text()
    assert is_redundant(agent.status())

    # The pool refills: after the one stretched wait in progress, one call a second again.
    fake_api.set_rate_limit(4500)
    agent.wait_for(lambda s: not s["api_budget"]["stretched"], expected + 5)
    again = gaps_after(fake_api, time.monotonic(), 3, 10)
    assert all(0.8 <= gap <= 1.8 for gap in again), again
    assert "Platform API budget recovered" in agent.log_text()
    print(f"\nrequest spacing at the fake: full pool {[round(g, 2) for g in full]} s, "
          f"{LOW} left {[round(g, 2) for g in stretched]} s (rule: {expected:.2f} s), "
          f"refilled {[round(g, 2) for g in again]} s")
