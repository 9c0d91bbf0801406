"""Five VPN connections (ten tunnels) on one gateway, one agent for all of them, against
one space charon (Lab.add_vpns): every connection comes up redundant, a ping crosses each
one's tunnel, and `agentctl status` and /metrics answer for all five. The structure is
asserted; the timings are printed (`space-vpn-lab bench-scale` measures them)."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from space_vpn_lab.bench_scale import agentctl_status, all_redundant, build_connections, ping_each, scale_config, scrape
from tests.lab.helpers import BRINGUP_TIMEOUT

pytestmark = pytest.mark.lab

CONNECTIONS = 5


def test_five_connections_come_up_carry_traffic_and_are_reported(lab, fake_api, make_agent):
    vpns = build_connections(lab, fake_api, CONNECTIONS)
    agent = make_agent()
    agent.write_config(scale_config(agent.workdir, lab, fake_api, vpns, poll_interval="2s"))
    started = time.monotonic()
    agent.start()
    status = agent.wait_for(lambda s: all_redundant(s, CONNECTIONS), BRINGUP_TIMEOUT, interval=0.05)
    redundant_s = time.monotonic() - started
    crossed = ping_each(lab, vpns)
    traffic_s = time.monotonic() - started

    assert crossed == [True] * CONNECTIONS
    assert [(c["space"], c["vpn"]) for c in status["connections"]] == [(v.space, v.vpn) for v in vpns]
    # Ten distinct endpoints, each connection its own pair.
    endpoints = [t["ip"] for c in status["connections"] for t in c["tunnels"]]
    assert len(set(endpoints)) == 2 * CONNECTIONS

    status = agent.wait_for(lambda s: s["health"] == "ok" and s["pass_seconds"] is not None, 15)
    assert all(c["health"] == "ok" for c in status["connections"])
    took_status, code, text = agentctl_status(agent.control_socket)
    assert code == 0
    assert all(f"{v.space}/{v.vpn}" in text for v in vpns), text
    took_scrape, body = scrape(lab.topology.cust_ns)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    health = {(s.labels["space"], s.labels["vpn"]): s.value for s in families["space_vpn_connection_health"].samples}
    assert health == {(v.space, v.vpn): 0 for v in vpns}
    active = [s for s in families["space_vpn_tunnel_active"].samples if s.value == 1]
    assert len(active) == CONNECTIONS
    (pass_sample,) = families["space_vpn_pass_duration_seconds"].samples
    print(f"\n{CONNECTIONS} connections: redundant in {redundant_s:.2f} s, a ping through each by {traffic_s:.2f} s; "
          f"pass {pass_sample.value * 1000:.1f} ms, agentctl status {took_status * 1000:.0f} ms, "
          f"scrape {took_scrape * 1000:.1f} ms ({len(body)} bytes)")
