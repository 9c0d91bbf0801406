"""Maintenance of the active tunnel, in policy mode against real charon daemons:
silent, graceful with the endpoint's return, announced by the API, operator drain.
Behaviour only (traffic continues, the right tunnel is active, the downed tunnel comes
back as standby); outage figures live in `space-vpn-lab bench`."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from space_vpn_lab.agent_process import is_redundant, tunnels_of
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.topology import CUSTOMER_HOST_IP, SPACE_HOST_IP
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, T2, customer_sas

pytestmark = pytest.mark.lab

PROBE = {"target": SPACE_HOST_IP, "interval": "100ms", "failures": 3}


def start(make_agent, **connection):
    agent = make_agent()
    config = yaml.safe_load(agent.config_path.read_text())
    config["connections"][0].update({"probe": PROBE, "mode": "policy", **connection})
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


def test_announced_maintenance_moves_traffic_before_the_tunnel_goes(lab, make_agent, fake_api):
    agent = start(make_agent)
    fake_api.set_tunnel_status(SPACE, VPN, 1, "DOWN", "maintenance")
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=500, interval=0.01) as pinger:
        status = agent.wait_for(active_is(2), 20)
        assert last_failover(status)["reason"] == "maintenance announced (Platform API: DOWN)"
        lab.space.silent_down(1)  # the announced maintenance happens
        result = pinger.wait()
    assert result.received > 0 and lab.customer_ping(count=5, interval=0.1).received == 5
    assert customer_sas(lab)[T2].installed_child is not None
    fake_api.set_tunnel_status(SPACE, VPN, 1, "UP")
    lab.space.restore(1)
    agent.wait_for(redundant_on(2), 60)


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
