"""The fault catalogue (policy mode, the host lab): each fault played against a running
agent, asserting what the traffic did and what `agentctl status` says.

Elsewhere in the catalogue: agent SIGKILL and restart (SAs adopted, none re-created)
in test_agent_bringup.py and, in route mode, the kernel lab; charon SIGKILL and restart,
and a reload with an invalid file, in test_agent_lifecycle.py.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import yaml

from space_vpn_lab import topology
from space_vpn_lab.agent_process import is_redundant, tunnels_of
from space_vpn_lab.bench_systems import PROBE
from space_vpn_lab.clock_skew import ClockJump
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import BRINGUP_TIMEOUT, LAB_FLOOR_PINGS, T1, T2, customer_sas

pytestmark = pytest.mark.lab

#: The systemd unit's capabilities (CapabilityBoundingSet): root, but file modes count.
AS_THE_UNIT = ["setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all", "--"]
#: Seconds each API fault lasts; SPACE_VPN_FAULT_PHASE_S=300 plays each for minutes.
PHASE_S = float(os.environ.get("SPACE_VPN_FAULT_PHASE_S", "3"))


def summary(status: dict) -> str:
    return status["connections"][0]["summary"]


def health(status: dict) -> str:
    return status["connections"][0]["health"]


def agentctl_status(agent) -> int:
    return subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, "status"],
                          capture_output=True, text=True, timeout=15).returncode


def sa_ids(lab) -> dict[str, tuple]:
    """IKE uniqueids and the installed CHILD_SA's SPI per tunnel: re-created SAs change them."""
    sas = customer_sas(lab)
    return {name: (sas[name].established_ike.uniqueid if sas[name].established_ike else None,
                   sas[name].installed_child.spi_in if sas[name].installed_child else None)
            for name in (T1, T2)}


def pinger(lab, seconds: float, interval: float = 0.02) -> Pinger:
    return Pinger(lab.topology.cust_ns, topology.CUSTOMER_HOST_IP, topology.SPACE_HOST_IP,
                  int(seconds / interval) + 50, interval)


def test_charon_absent_at_start_then_started(lab, make_agent):
    """The agent starts before charon: it stays up, says why in status (and what to do),
    `agentctl status` exits 2; once charon runs, both tunnels come up on their own."""
    lab.customer_charon.stop()
    agent = make_agent()
    agent.start()
    status = agent.wait_for(lambda s: s["ready"], BRINGUP_TIMEOUT)
    assert not status["charon_reachable"] and health(status) == "down"
    assert "charon unreachable" in summary(status) and "is charon running?" in summary(status)
    assert agentctl_status(agent) == 2
    time.sleep(2)
    assert agent.running()
    lab.customer_charon.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    assert lab.customer_ping(count=10, interval=0.05).received == 10


def test_vici_socket_permission_denied(lab, make_agent):
    """Run with the unit's capabilities only, the agent cannot open a socket whose mode
    forbids it: status names the socket, the error and the fix; the mode put back, it
    carries on by itself."""
    socket_path = lab.customer_charon.vici_socket
    mode = stat.S_IMODE(os.stat(socket_path).st_mode)
    os.chmod(socket_path, 0)
    try:
        agent = make_agent()
        agent.start(wrapper=AS_THE_UNIT)
        status = agent.wait_for(lambda s: s["ready"], BRINGUP_TIMEOUT)
        assert health(status) == "down" and "Permission denied" in summary(status), summary(status)
        assert socket_path in summary(status) and "run it as root" in summary(status)
    finally:
        os.chmod(socket_path, mode)
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    assert lab.customer_ping(count=10, interval=0.05).received == 10


def test_both_tunnels_down_then_back(lab, make_agent):
    """Both far-end endpoints drop silently (both maintained at once, or the uplink
    lost): status says down, no tunnel carries traffic; both back, both come up again
    without anyone's help."""
    agent = make_agent()
    config = yaml.safe_load(agent.config_path.read_text())
    config["connections"][0]["probe"] = dict(PROBE)
    agent.write_config(config)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    lab.space.silent_down(1)
    lab.space.silent_down(2)
    status = agent.wait_for(lambda s: health(s) == "down", 60)
    assert summary(status) == "no tunnel carries traffic", summary(status)
    assert agentctl_status(agent) == 2
    assert lab.customer_ping(count=5, interval=0.05).received == 0
    lab.space.restore(1)
    lab.space.restore(2)
    agent.wait_for(lambda s: is_redundant(s, active=1) or is_redundant(s, active=2), BRINGUP_TIMEOUT + 60)
    assert lab.customer_ping(count=20, interval=0.05).received == 20


def test_api_faults_one_after_the_other_change_nothing_on_the_tunnels(lab, make_agent, fake_api):
    """5xx, rate limiting (429 with Retry-After), timeouts and garbage (a proxy's HTML page),
    each for PHASE_S: traffic flows throughout, no SA is re-created, status names each
    fault, the agent does not hammer the API, and the first good answer clears it all."""
    agent = make_agent(poll_interval="1s")
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before = sa_ids(lab)
    phases = [
        ("5xx", lambda: fake_api.fail_next(10**6, status=503), "unavailable"),
        ("429", lambda: fake_api.fail_next(10**6, status=429, error_id="rate_limit", retry_after=2), "rate_limited"),
        ("timeout", lambda: fake_api.set_delay(3.0), "unavailable"),
        ("garbage", lambda: fake_api.fail_next(10**6, status=200, body=b"<html><body>Bad gateway</body></html>"),
         "payload"),
    ]
    with pinger(lab, PHASE_S * len(phases) + 30) as ping:
        for name, start, kind in phases:
            counted = agent.status()["connections"][0]["api_errors"].get(kind, 0)
            requests_before = len(fake_api.requests)
            start()
            status = agent.wait_for(lambda s: s["connections"][0]["api_errors"].get(kind, 0) > counted,
                                    PHASE_S + 20)
            assert status["connections"][0]["api_error"], name
            time.sleep(PHASE_S)
            assert is_redundant(agent.status()), name
            fake_api.fail_next(0)
            fake_api.set_delay(0)
            calls = len(fake_api.requests) - requests_before
            # Polling at 1 s with at most 3 retries each: never a storm.
            assert calls <= 4 * (PHASE_S + 25), (name, calls)
            agent.wait_for(lambda s: s["connections"][0]["api_error"] is None, 30)
        result = ping.stop()
    assert result.transmitted > 100 and result.lost <= LAB_FLOOR_PINGS, result
    assert sa_ids(lab) == before


def test_state_dir_unwritable(lab, make_agent, fake_api):
    """The cache cannot be written (state_dir read-only to the unit's capabilities): the
    new answer is used all the same, status says the cache fails and how to fix it, the
    tunnels are untouched; writable again, the error goes."""
    agent = make_agent()
    agent.start(wrapper=AS_THE_UNIT)
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before = sa_ids(lab)
    state_dir = agent.workdir / "state"
    mode = stat.S_IMODE(os.stat(state_dir).st_mode)
    os.chmod(state_dir, 0o500)
    try:
        fake_api.set_tunnel_status(SPACE, VPN, 1, "UP", message="checked at 12:00")  # a new answer to cache
        status = agent.wait_for(lambda s: any("cannot cache" in e for e in s["errors"]), 20)
        error = next(e for e in status["errors"] if "cannot cache" in e)
        assert "Permission denied" in error and str(state_dir.parent) in error and "state_dir" in error
        assert is_redundant(status) and agentctl_status(agent) == 0
    finally:
        os.chmod(state_dir, mode)
    fake_api.set_tunnel_status(SPACE, VPN, 1, "UP", message="checked at 12:01")
    agent.wait_for(lambda s: not s["errors"], 20)
    assert sa_ids(lab) == before
    assert lab.customer_ping(count=10, interval=0.05).received == 10


def test_sighup_storm(lab, make_agent, fake_api):
    """200 SIGHUPs in a burst: the agent reloads, stays up, loses no traffic, re-creates
    no SA and does not turn the storm into API calls (the poller is kept)."""
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before, requests_before = sa_ids(lab), len(fake_api.requests)
    with pinger(lab, 10) as ping:
        for _ in range(200):
            agent.signal(signal.SIGHUP)
            time.sleep(0.005)
        time.sleep(3)
        result = ping.stop()
    status = agent.wait_for(lambda s: is_redundant(s) and not s["errors"], 20)
    assert agent.running() and status["charon_reachable"]
    assert result.lost == 0 and result.received > 100, result
    assert sa_ids(lab) == before
    # Polling every 2 s goes on as before: a handful of calls, not one per SIGHUP.
    assert len(fake_api.requests) - requests_before <= 10, len(fake_api.requests) - requests_before
    assert agent.log_text().count("config reloaded") >= 1
    assert tunnels_of(status)[1]["role"] == "active"


def test_wall_clock_jumps_an_hour_forward_and_back(lab, make_agent, tmp_path):
    """The agent's wall clock steps +1 h, then -1 h (NTP stepping a clock that was off):
    timers run on the monotonic clock, so nothing fails over, re-initiates or expires;
    traffic flows and status stays OK. (Heroku's own timestamps are judged on Heroku's
    clock: the next test.)"""
    jump = ClockJump(tmp_path / "clock-offset")
    agent = make_agent()
    agent.start(env=jump.env())
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before, generation = sa_ids(lab), agent.status()["connections"][0]["generation"]
    with pinger(lab, 15) as ping:
        for offset in (3600, -3600, 0):
            jump.set(agent.pid, offset)
            time.sleep(4)
            status = agent.status()
            assert is_redundant(status) and health(status) == "ok", (offset, summary(status))
            assert abs(status["generated_at"] - (time.time() + offset)) < 30, offset  # the jump took
        result = ping.stop()
    assert result.lost == 0 and result.received > 100, result
    assert sa_ids(lab) == before
    conn = agent.status()["connections"][0]
    assert conn["failovers"] == [] and conn["generation"] == generation and not agent.status()["errors"]


def test_a_down_is_judged_on_herokus_clock_while_ours_is_an_hour_off(lab, make_agent, fake_api, tmp_path):
    """AWS telemetry says DOWN with the moment it changed. Our clock an hour behind: a
    DOWN from before our SA came up is still stale (nothing moves); an hour ahead: a DOWN
    from after it still counts (failover). The agent compares on Heroku's clock, from the
    Date of its answers; on its own wall clock both would go the wrong way."""
    jump = ClockJump(tmp_path / "clock-offset")
    agent = make_agent()
    agent.start(env=jump.env())
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before = sa_ids(lab)
    with pinger(lab, 40) as ping:
        jump.set(agent.pid, -3600)
        fake_api.set_tunnel_status(SPACE, VPN, 1, "DOWN", changed_at=time.time() - 600)
        time.sleep(5)  # two polls and their passes
        status = agent.status()
        conn = status["connections"][0]
        assert conn["failovers"] == [] and tunnels_of(status)[1]["role"] == "active", summary(status)
        assert sa_ids(lab) == before
        jump.set(agent.pid, 3600)
        fake_api.set_tunnel_status(SPACE, VPN, 1, "DOWN")  # stamped now, seconds after our SA
        status = agent.wait_for(lambda s: tunnels_of(s)[2]["role"] == "active", 10)
        result = ping.stop()
    failovers = status["connections"][0]["failovers"]
    assert [(f["from_tunnel"], f["to_tunnel"], f["kind"]) for f in failovers] == [(1, 2, "telemetry")], failovers
    assert result.received > 100 and result.lost <= 2, result  # the move is make-before-break
