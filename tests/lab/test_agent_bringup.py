"""The foundation's acceptance, against real charon daemons and a real HTTP fake API:
cold start, the seed's parameters in charon, adoption after SIGKILL, API outages."""

from __future__ import annotations

import json
import time
from importlib import resources

import jsonschema

import pytest

from agent.adapters.charon_messages import decode_text
from agent.adapters.connection_cache import ConnectionCache
from space_vpn_lab.agent_process import is_redundant, tunnels_of
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, T2, assert_no_secret, customer_sas

pytestmark = pytest.mark.lab

def test_cold_start_brings_tunnel_1_active_and_tunnel_2_hot_standby(lab, make_agent, secrets_of):
    agent = make_agent()
    agent.start()
    status = agent.wait_for(is_redundant, BRINGUP_TIMEOUT)

    sas = customer_sas(lab)
    assert sas[T1].installed_child is not None
    assert sas[T2].ike_state == "ESTABLISHED"
    assert sas[T2].children == ()
    result = lab.customer_ping(count=5, interval=0.2)
    assert result.received == result.transmitted == 5

    assert status["health"] == "ok"
    schema = json.loads(resources.files("agent.control").joinpath("status.schema.json").read_text())
    jsonschema.validate(status, schema)
    assert status["connections"][0]["source"] == "api"
    assert status["connections"][0]["mode"] == "policy"
    assert "auto" in status["connections"][0]["mode_reason"]
    assert_no_secret(agent.log_text() + repr(status), secrets_of)


def test_charon_holds_the_seed_parameters(lab, make_agent):
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    session = lab.customer_charon.session()
    try:
        conns = {name: conf for event in session.list_conns() for name, conf in event.items()}
        sas = {name: sa for event in session.list_sas() for name, sa in event.items()}
    finally:
        session.transport.close()

    for number, name in ((1, T1), (2, T2)):
        conn = conns[name]
        assert decode_text(conn["version"]) == "IKEv1"
        # The agent's own liveness settings, not the seed's 10 s / 30 s (core/desired).
        assert decode_text(conn["dpd_delay"]) == "1"
        assert decode_text(conn["dpd_timeout"]) == "3"
        assert decode_text(conn["reauth_time"]) == "28800"
        assert [decode_text(a) for a in conn["remote_addrs"]] == [lab.tunnel_ips[number - 1]]
        child = conn["children"][name]
        assert decode_text(child["rekey_time"]) == "3060"
        assert decode_text(child["dpd_action"]) == "start"  # charon reports dpd_action=restart as "start"
        assert [decode_text(ts) for ts in child["local-ts"]] == ["172.16.0.0/16"]
        assert [decode_text(ts) for ts in child["remote-ts"]] == ["10.0.0.0/16"]

    # 5.9.8's list-conns shows no proposals: the negotiated SAs prove they are the seed's aes256-sha256-modp2048 in both phases.
    ike = sas[T1]
    assert decode_text(ike["encr-alg"]) == "AES_CBC" and decode_text(ike["encr-keysize"]) == "256"
    assert decode_text(ike["integ-alg"]) == "HMAC_SHA2_256_128"
    assert decode_text(ike["dh-group"]) == "MODP_2048"
    child = next(iter(ike["child-sas"].values()))
    assert decode_text(child["encr-alg"]) == "AES_CBC" and decode_text(child["integ-alg"]) == "HMAC_SHA2_256_128"
    assert decode_text(child["dh-group"]) == "MODP_2048"  # PFS
    # 5.9.8's list-conns shows no child life_time: the SA's remaining life shows the 1 h.
    assert 3500 < int(decode_text(child["life-time"])) <= 3600
    assert int(decode_text(ike["reauth-time"])) <= 28800


def test_sigkill_and_restart_adopts_without_recreating_or_losing_traffic(lab, make_agent):
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before = customer_sas(lab)
    child_before = before[T1].installed_child
    ike_before = {n: before[n].established_ike.uniqueid for n in (T1, T2)}

    # 200 pings 50 ms apart (10 s) span the kill, the restart and a few passes after it.
    with Pinger(lab.topology.cust_ns, "172.16.0.2", "10.0.0.10", count=200, interval=0.05) as pinger:
        time.sleep(0.5)
        agent.kill()
        agent.start()
        agent.wait_for(lambda s: s["ready"] and is_redundant(s), BRINGUP_TIMEOUT)
        result = pinger.wait()

    after = customer_sas(lab)
    assert after[T1].installed_child.uniqueid == child_before.uniqueid
    assert after[T1].installed_child.spi_in == child_before.spi_in
    assert {n: after[n].established_ike.uniqueid for n in (T1, T2)} == ike_before
    assert after[T2].children == ()
    assert result.transmitted > 0 and result.lost == 0


def test_api_unreachable_at_start_with_cache_brings_tunnels_up_from_cache(lab, make_agent, fake_api):
    agent = make_agent()
    ConnectionCache(agent.workdir / "state").save(SPACE, VPN, fake_api.connection(SPACE, VPN))
    fake_api.set_unreachable(True)
    agent.start()
    status = agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    conn = status["connections"][0]
    assert conn["source"] == "cache"
    assert lab.customer_ping(count=3, interval=0.2).received == 3
    agent.wait_for(lambda s: s["connections"][0]["api_error"], 20)


def test_api_unreachable_without_cache_retries_and_reports(lab, make_agent, fake_api):
    fake_api.set_unreachable(True)
    agent = make_agent()
    agent.start()
    status = agent.wait_for(lambda s: s["connections"][0]["api_error"], 30)
    conn = status["connections"][0]
    assert conn["health"] == "down"
    assert conn["source"] == "none"
    assert "Platform API" in conn["summary"]
    seen = len(fake_api.requests)
    time.sleep(5)
    assert agent.running()
    assert len(fake_api.requests) > seen, "the agent stopped retrying"
    assert customer_sas(lab) == {}

    fake_api.set_unreachable(False)  # the API comes back: tunnels come up
    status = agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    assert status["connections"][0]["source"] == "api"


def test_unauthorized_is_reported_and_tunnels_stay_up(lab, make_agent, fake_api, secrets_of):
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    child = customer_sas(lab)[T1].installed_child

    fake_api.set_token("HRKU-someone-else")
    status = agent.wait_for(lambda s: s["connections"][0]["api_error"], 20)
    assert "401" in status["connections"][0]["api_error"]
    time.sleep(3)
    status = agent.status()
    assert is_redundant(status)
    assert tunnels_of(status)[1]["child_state"] == "INSTALLED"
    assert customer_sas(lab)[T1].installed_child.uniqueid == child.uniqueid
    assert "401" in agent.log_text()
    assert_no_secret(agent.log_text() + repr(status), secrets_of)


def test_waits_while_the_connection_is_provisioning(lab, make_agent, fake_api):
    fake_api.set_connection_status(SPACE, VPN, "provisioning")
    agent = make_agent()
    agent.start()
    status = agent.wait_for(lambda s: s["connections"][0]["connection_status"] == "provisioning", 20)
    assert "provisioning" in status["connections"][0]["summary"]
    assert status["connections"][0]["health"] == "down"
    assert customer_sas(lab) == {}

    fake_api.set_connection_status(SPACE, VPN, "active")
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
