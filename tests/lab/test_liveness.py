"""Failover without any probe target, from IKE itself, against real charon daemons in
policy mode, both IKE versions: a silent loss of the active tunnel is found by the
agent's short DPD (IKEv1: charon's own 3 s timeout; IKEv2: a DPD left unanswered for
1.5 s), far sooner than the seed's 30 s (IKEv2: ~165 s). And one-way traffic, which
never brings anything back, is no failure while IKE answers. Behaviour only; the
seconds lost live in `space-vpn-lab bench`."""

from __future__ import annotations

import subprocess
import time

import pytest
from space_vpn_lab.agent_process import tunnels_of
from space_vpn_lab.topology import CUSTOMER_HOST_IP, SPACE_HOST_IP
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import T2, customer_sas
from tests.lab.test_failover import active_is, start

pytestmark = pytest.mark.lab


def start_without_probe(make_agent):
    return start(make_agent, probe=None)  # the failover tests' start, with no probe at all


@pytest.mark.parametrize("lab", [1, 2], indirect=True, ids=["ikev1", "ikev2"])
def test_silent_loss_without_a_probe_is_found_by_ike(lab, make_agent):
    agent = start_without_probe(make_agent)
    # Sparse traffic, one packet a second: the loss is found by IKE, not by the traffic.
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=25, interval=1.0) as pinger:
        time.sleep(2)
        lab.space.silent_down(1)
        began = time.monotonic()
        status = agent.wait_for(active_is(2), 20)  # the seed's DPD would take 30 s (IKEv2: ~165 s)
        found_after = time.monotonic() - began
        pinger.stop()  # the traffic's part is done: it ran, sparse, until the loss was found
    failover = status["connections"][0]["failovers"][-1]
    expected = {1: "down", 2: "liveness"}[lab.ike_version]  # IKEv1: charon's DPD timeout drops the SA
    assert (failover["from_tunnel"], failover["to_tunnel"], failover["kind"]) == (1, 2, expected), failover
    assert found_after < 15, found_after
    assert lab.customer_ping(count=5, interval=0.2).received == 5
    assert customer_sas(lab)[T2].installed_child is not None


def test_one_way_traffic_is_no_failure_while_ike_answers(lab, make_agent):
    agent = start_without_probe(make_agent)
    # Pings whose replies the space side drops: packets go out, nothing comes back, for
    # longer than the silence timeout, and IKE keeps answering: nothing moves.
    # The space host drops the requests after decryption (the table goes with the lab's namespace).
    subprocess.run(["ip", "netns", "exec", lab.topology.space_ns, "nft", "-f", "-"], check=True, input=(
        "table inet svt_one_way {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
        f"    ip daddr {SPACE_HOST_IP} icmp type echo-request drop\n  }}\n}}\n"), text=True)
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=80, interval=0.1) as pinger:
        result = pinger.wait()
    status = agent.status()
    assert result.received == 0  # the stream really was one-way
    assert status["connections"][0]["failovers"] == []
    assert tunnels_of(status)[1]["role"] == "active" and status["connections"][0]["health"] == "ok"


def test_a_loss_burst_on_both_tunnels_then_a_real_loss_moves_at_once(lab, make_agent):
    """The customer's uplink drops everything for a moment (both tunnels at once), then,
    well within a minute, the active tunnel is lost for real: the agent judges the
    present, so the burst leaves no memory that holds back the real failover."""
    agent = start(make_agent)  # with the failover tests' 100 ms x 3 probe
    for number in (1, 2):
        lab.space.block(number)
    time.sleep(1.0)
    for number in (1, 2):
        lab.space.restore(number)
    time.sleep(3.0)  # both answer again
    status = agent.status()
    active = next(n for n, t in tunnels_of(status).items() if t["role"] == "active")
    began = time.monotonic()
    lab.space.silent_down(active)
    status = agent.wait_for(active_is(3 - active), 10)  # probes: well under a second; DPD alone: 30 s
    assert time.monotonic() - began < 5
    assert status["connections"][0]["failovers"][-1]["kind"] in ("probe", "liveness", "down")
    assert lab.customer_ping(count=5, interval=0.2).received == 5
