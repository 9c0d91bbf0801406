"""Maintenance of the active tunnel, in policy mode against real charon daemons:
silent, graceful with the endpoint's return, AWS telemetry DOWN (late, as AWS reports it), operator drain.
Behaviour only (traffic continues, the right tunnel is active, the downed tunnel comes
back as standby); outage figures live in `space-vpn-lab bench`. Also the probe as a
real Private Space needs it: a TCP connect to the internal-routing app by host name,
which fails over on a silent loss, follows the name when it moves, and does nothing
(no failover) while the name does not resolve."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from space_vpn_lab.agent_process import is_redundant, tunnels_of
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.topology import APP_HOST_IPS, APP_NAME, APP_PORT, CUSTOMER_HOST_IP, SPACE_HOST_IP
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, T2, customer_sas

pytestmark = pytest.mark.lab

PROBE = {"target": SPACE_HOST_IP, "interval": "100ms", "failures": 3}
TCP_PROBE = {"target": APP_NAME, "port": APP_PORT, "interval": "100ms", "failures": 3, "resolve_interval": "1s"}


def start(make_agent, probe=PROBE, **connection):
    agent = make_agent()
    config = yaml.safe_load(agent.config_path.read_text())
    config["connections"][0].update({"probe": probe, "mode": "policy", **connection})
    agent.write_config(config)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    return agent


def active_is(number: int):
    return lambda status: tunnels_of(status)[number]["role"] == "active"


def redundant_on(number: int):
    return lambda status: is_redundant(status, active=number)


def last_failover(status) -> dict:
    return status["connections"][0]["failovers"][-1]


def test_silent_loss_of_the_active_tunnel(lab, make_agent):
    agent = start(make_agent)
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=600, interval=0.01) as pinger:
        time.sleep(1)
        lab.space.silent_down(1)
        status = agent.wait_for(active_is(2), 30)
        result = pinger.wait()
    assert "probes lost" in last_failover(status)["reason"]
    assert result.received > 0 and lab.customer_ping(count=5, interval=0.1).received == 5
    assert customer_sas(lab)[T2].installed_child is not None

    lab.space.restore(1)  # the endpoint is back: tunnel 1 returns as the standby
    agent.wait_for(redundant_on(2), 30)
    assert customer_sas(lab)[T1].children == ()


def test_graceful_maintenance_and_the_endpoints_return(lab, make_agent):
    agent = start(make_agent)
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=300, interval=0.01) as pinger:
        time.sleep(1)
        lab.space.graceful_down(1)  # the endpoint says goodbye (DELETE) ...
        lab.space.block(1)  # ... and stays away for its maintenance
        status = agent.wait_for(active_is(2), 10)
        result = pinger.wait()
    assert last_failover(status)["reason"] == "IKE SA down"
    assert result.received > 0 and lab.customer_ping(count=5, interval=0.1).received == 5

    time.sleep(3)  # maintenance: the agent keeps re-initiating tunnel 1 meanwhile
    lab.space.restore(1)
    agent.wait_for(redundant_on(2), 30)
    assert customer_sas(lab)[T1].established_ike is not None


def test_telemetry_down_on_the_active_tunnel_moves_traffic_away(lab, make_agent, fake_api):
    """AWS telemetry (the Platform API's tunnel status) says DOWN while our SAs still look
    up: a late confirmation of a loss, so traffic leaves that tunnel."""
    agent = start(make_agent)
    fake_api.set_tunnel_status(SPACE, VPN, 1, "DOWN", "")
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=300, interval=0.01) as pinger:
        status = agent.wait_for(active_is(2), 20)
        result = pinger.wait()
    assert (last_failover(status)["kind"], last_failover(status)["reason"]) == (
        "telemetry", "AWS telemetry (Platform API): tunnel DOWN")
    assert result.received > 0 and lab.customer_ping(count=5, interval=0.1).received == 5
    assert customer_sas(lab)[T2].installed_child is not None
    fake_api.set_tunnel_status(SPACE, VPN, 1, "UP")
    agent.wait_for(redundant_on(2), 60)


def test_telemetry_down_arrives_after_the_agent_moved(lab, make_agent, fake_api):
    """As AWS does it: the tunnel drops first, its status turns DOWN seconds later. The
    agent has moved by then (its probes), and the late DOWN changes nothing."""
    agent = start(make_agent)
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=400, interval=0.01) as pinger:
        time.sleep(0.5)
        lab.space.silent_down(1)
        status = agent.wait_for(active_is(2), 20)
        assert last_failover(status)["kind"] == "probe"
        time.sleep(2)
        fake_api.set_tunnel_status(SPACE, VPN, 1, "DOWN", "")
        time.sleep(2)  # the API is polled every second in the lab
        result = pinger.wait()
    status = agent.status()
    assert len(status["connections"][0]["failovers"]) == 1 and tunnels_of(status)[2]["role"] == "active"
    assert result.received > 0 and lab.customer_ping(count=5, interval=0.1).received == 5


def agentctl(agent, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, *args],
                          capture_output=True, text=True, timeout=10)


def test_operator_drain_and_failback_to_the_preferred_tunnel(lab, make_agent):
    agent = start(make_agent, preferred_tunnel=1, failback_hold_down="2s")
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=300, interval=0.01) as pinger:
        drained = agentctl(agent, "drain", "1")
        status = agent.wait_for(redundant_on(2), 10)
        result = pinger.wait()
    assert drained.returncode == 0 and "tunnel 1 drained" in drained.stdout
    assert last_failover(status)["reason"] == "drained by the operator"
    assert tunnels_of(status)[1]["drained"] is True
    assert result.received > 0

    refused = agentctl(agent, "drain", "2")
    assert refused.returncode == 1 and "undrain 1" in refused.stderr
    assert agentctl(agent, "undrain", "1").returncode == 0
    status = agent.wait_for(redundant_on(1), 20)  # failback after the hold-down
    assert last_failover(status)["reason"] == "failback to preferred tunnel 1"
    assert lab.customer_ping(count=5, interval=0.1).received == 5


def test_an_ike_sa_the_far_end_forgot_before_quick_mode_is_replaced(lab, make_agent):
    """Tunnel 1's endpoint answers Main Mode, ignores Quick Mode, then forgets the IKE SA
    (as when it is replaced right after our re-initiation): the Quick Mode would be
    retransmitted into the void for minutes, and every initiate queue behind it. The
    agent drops that IKE SA after connect_timeout and starts afresh."""
    lab.space.ignore_quick_mode(1)
    agent = make_agent()
    config = yaml.safe_load(agent.config_path.read_text())
    config["connections"][0].update({"probe": PROBE, "mode": "policy"})
    agent.write_config(config)
    agent.start()
    deadline = time.monotonic() + BRINGUP_TIMEOUT
    while lab.space.sas()[1].ike_state != "ESTABLISHED":
        assert time.monotonic() < deadline, "tunnel 1's Main Mode never completed"
        time.sleep(0.1)
    lab.space.forget(1)
    lab.space.ignore_quick_mode(1, False)
    stuck = customer_sas(lab)[T1].established_ike
    assert stuck is not None and stuck.children == ()

    # Within connect_timeout (5 s) and a backoff step, the far end knows tunnel 1 again.
    deadline = time.monotonic() + 20
    while lab.space.sas()[1].ike_state != "ESTABLISHED":
        assert time.monotonic() < deadline, f"tunnel 1 not re-established; agent log:\n{agent.log_text()[-2000:]}"
        time.sleep(0.2)
    assert f"terminating IKE SA #{stuck.uniqueid}" in agent.log_text()
    # Meanwhile tunnel 2 may have taken the traffic (tunnel 1 answered no probe): either way round.
    agent.wait_for(lambda status: is_redundant(status, active=1) or is_redundant(status, active=2), 30)


def tunnel1_probes(agent) -> dict:
    return tunnels_of(agent.status())[1]


def wait_log(agent, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in agent.log_text():
        assert time.monotonic() < deadline, f"not in the agent log: {text!r}\n{agent.log_text()[-2000:]}"
        time.sleep(0.1)


def test_tcp_probe_fails_over_on_a_silent_loss(lab, make_agent):
    """The app answers no ping: only the TCP probe sees the blackholed tunnel."""
    lab.name_app()
    agent = start(make_agent, probe=TCP_PROBE)
    agent.wait_for(lambda s: tunnels_of(s)[1]["probe_sent"] >= 5 and tunnels_of(s)[1]["probe_rtt_ms"], 10)
    assert tunnels_of(agent.status())[1]["probe_lost"] == 0
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=600, interval=0.01) as pinger:
        time.sleep(1)
        lab.space.silent_down(1)
        status = agent.wait_for(active_is(2), 30)
        result = pinger.wait()
    assert "probes lost" in last_failover(status)["reason"]
    assert result.received > 0 and lab.customer_ping(count=5, interval=0.1).received == 5
    # Tunnel 2 answers the TCP probe now.
    agent.wait_for(lambda s: tunnels_of(s)[2]["probe_sent"] >= 5 and tunnels_of(s)[2]["probe_healthy"], 10)
    lab.space.restore(1)
    agent.wait_for(redundant_on(2), 30)


def test_probes_follow_the_app_name_when_it_moves(lab, make_agent):
    """The name moves to the app's other address, then the old one goes away (as a load
    balancer node is retired after DNS moved on): probes follow, nothing fails over."""
    old, new = APP_HOST_IPS
    lab.name_app(old)
    agent = start(make_agent, probe=TCP_PROBE)
    agent.wait_for(lambda s: tunnels_of(s)[1]["probe_sent"] >= 5, 10)
    lab.name_app(new)
    wait_log(agent, f"probe target {APP_NAME} moved from {old} to {new}", 10)
    lab.app.retire(old)
    sent, syns_old, syns_new = tunnel1_probes(agent)["probe_sent"], lab.app.syns(old), lab.app.syns(new)
    time.sleep(2)
    status = agent.status()
    tunnel1 = tunnels_of(status)[1]
    assert tunnel1["role"] == "active" and status["connections"][0]["failovers"] == []
    assert tunnel1["probe_sent"] - sent >= 10 and tunnel1["probe_consecutive_failures"] == 0, tunnel1
    assert tunnel1["probe_lost"] == 0, tunnel1
    assert lab.app.syns(old) == syns_old  # nothing went to the retired address
    assert lab.app.syns(new) - syns_new >= 10


def test_an_unresolvable_probe_name_never_fails_over(lab, make_agent):
    """No address, no probe, no result: a name that does not resolve is not the tunnel's
    fault. Said once in the log, and the probes start when the name appears."""
    lab.name_app(APP_HOST_IPS[0], name="other.acme.internal")
    agent = start(make_agent, probe=TCP_PROBE)
    wait_log(agent, f"probe target {APP_NAME}: no IPv4 address: [Errno -2] Name or service not known", 10)
    time.sleep(6)  # a retry (every 5 s while a name gives no address) and many probe intervals
    status = agent.status()
    assert all(t["probe_sent"] == 0 and t["probe_healthy"] for t in tunnels_of(status).values())
    assert status["connections"][0]["failovers"] == [] and is_redundant(status)
    assert agent.log_text().count("no IPv4 address") == 1
    lab.name_app(APP_HOST_IPS[0])
    agent.wait_for(lambda s: tunnels_of(s)[1]["probe_sent"] >= 5 and tunnels_of(s)[1]["probe_lost"] == 0, 15)
