"""A hostile Platform API against real charon daemons in policy mode: while traffic
flows, the fake switches to an answer that would pull half the internet into the
tunnel, to a 70 000-character PSK, and to an error body full of newlines. Each is
refused by name; not one ping is lost, the SAs stay the ones that were up, the last
good answer stays in the cache, and status says what was refused."""

from __future__ import annotations

import time

import pytest

from space_vpn_lab.agent_process import is_redundant
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.topology import CUSTOMER_HOST_IP, SPACE_CIDR, SPACE_HOST_IP
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, customer_sas
from tests.lab.test_vpn_life import conn, ike_ids, make

pytestmark = pytest.mark.lab

HOSTILE_ERROR = "Simulated.\nWATCHDOG_USEC=1\nMAINPID=1\n\x1b[2J"


def _api_error_with(text: str):
    return lambda s: (conn(s)["api_error"] or "").find(text) >= 0


def test_hostile_answers_are_refused_while_traffic_flows(lab, make_agent, fake_api):
    agent = make(make_agent)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before = ike_ids(lab)
    child = customer_sas(lab)[T1].installed_child.uniqueid
    cache = next(agent.workdir.rglob("vpn-*.json"))
    cached = cache.read_bytes()
    good_psk = lab.psks[0]
    long_psk = "A" * 70_000

    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=3000, interval=0.01) as pinger:
        time.sleep(0.5)
        fake_api.set_space_cidr_block(SPACE, VPN, "0.0.0.0/1")
        status = agent.wait_for(_api_error_with("space_cidr_block: 0.0.0.0/1 is not inside RFC 1918"), 15)
        fake_api.set_space_cidr_block(SPACE, VPN, SPACE_CIDR)

        fake_api.set_psk(SPACE, VPN, 1, long_psk)
        psk_status = agent.wait_for(_api_error_with("tunnels[0].pre_shared_key: must be 8 to 64 characters"), 15)
        fake_api.set_psk(SPACE, VPN, 1, good_psk)

        fake_api.fail_next(3, status=422, error_id="invalid_params", message=HOSTILE_ERROR)
        error_status = agent.wait_for(_api_error_with("HTTP 422"), 15)

        agent.wait_for(lambda s: conn(s)["api_error"] is None, 15)
        time.sleep(1.0)
        result = pinger.stop()

    assert result.lost == 0, f"{result.lost} of {result.transmitted} pings lost"
    assert ike_ids(lab) == before and customer_sas(lab)[T1].installed_child.uniqueid == child
    assert cache.read_bytes() == cached
    assert is_redundant(status) and is_redundant(psk_status) and is_redundant(error_status)
    assert long_psk not in psk_status["connections"][0]["api_error"]
    assert long_psk not in agent.log_text() and good_psk not in agent.log_text()
    final = agent.status()
    assert conn(final)["generation"] == 1 and conn(final)["api_errors"].get("payload", 0) >= 2
