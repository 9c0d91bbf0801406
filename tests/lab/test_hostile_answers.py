"""A hostile Platform API against real charon daemons in policy mode, on a gateway that
serves two VPN connections (two spaces). While traffic flows over both, the fake
switches the first connection to an answer that would pull half the internet into the
tunnel, to a 70 000-character PSK, and to an error body full of newlines. Each is
refused by name; not one ping over it is lost, its SAs stay the ones that were up, its
last good answer stays in the cache, and status says what was refused. Meanwhile the
other connection keeps being managed: the space side drops its standby and the agent
brings it back, a routable CIDR update of its own rolls over both its tunnels, and its
own answers keep being accepted while the first's fail."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import yaml

from agent.adapters.connection_cache import ConnectionCache
from agent.core.model import object_name
from space_vpn_lab.agent_process import is_redundant
from space_vpn_lab.fake_api import SPACE, VPN, serve_space_side
from space_vpn_lab.topology import (CUSTOMER_HOST_IP, CUSTOMER_PUBLIC_IP, OTHER_SPACE_HOST_IP, SECOND_CUSTOMER_HOST_IP,
                                    SPACE_CIDR, SPACE_HOST_IP)
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import BRINGUP_TIMEOUT, LAB_FLOOR_PINGS, T1, T2, assert_no_secret, customer_sas
from tests.lab.test_vpn_life import conn, make

pytestmark = pytest.mark.lab

HOSTILE_ERROR = "Simulated.\nWATCHDOG_USEC=1\nMAINPID=1\n\x1b[2J"
#: The other connection: the same gateway's VPN into a second space.
OTHER_SPACE, OTHER_VPN = "acme-eu", "branch"
OTHER_T1, OTHER_T2 = (object_name(f"{OTHER_SPACE}-{OTHER_VPN}", n) for n in (1, 2))
OTHER_WIDER_CIDR = "192.168.0.0/16"  # `spaces:vpn:update --cidrs` of the other connection
STANDBY_INITIATE = f"initiating {OTHER_T2} (IKE SA only: standby)"


def other(status: dict) -> dict:
    return status["connections"][1]


def _api_error_with(text: str):
    return lambda s: (conn(s)["api_error"] or "").find(text) >= 0


def both_redundant(status: dict) -> bool:
    return is_redundant(status) and (is_redundant(status, 1, index=1) or is_redundant(status, 2, index=1))


def ike_id(lab, name: str) -> str | None:
    ike = customer_sas(lab).get(name)
    return ike.established_ike.uniqueid if ike is not None and ike.established_ike is not None else None


def wait_until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout:g} s")
        time.sleep(0.2)


def test_hostile_answers_are_refused_while_traffic_flows_and_the_other_connection_is_managed(
        lab, make_agent, fake_api):
    side = lab.add_vpn("branch")
    serve_space_side(fake_api, OTHER_SPACE, OTHER_VPN, side)
    agent = make(make_agent)
    config = yaml.safe_load(agent.config_path.read_text())
    config["connections"].append({"space": OTHER_SPACE, "vpn": OTHER_VPN, "mode": "policy",
                                  "local_address": CUSTOMER_PUBLIC_IP,
                                  "probe": {"target": OTHER_SPACE_HOST_IP, "interval": "100ms", "failures": 3}})
    agent.write_config(config)
    agent.start()
    agent.wait_for(lambda s: is_redundant(s) and is_redundant(s, index=1), BRINGUP_TIMEOUT)
    before = {name: ike_id(lab, name) for name in (T1, T2, OTHER_T1, OTHER_T2)}
    child = customer_sas(lab)[T1].installed_child.uniqueid
    cache = ConnectionCache(agent.workdir / "state")
    cached, other_cached = cache.path(SPACE, VPN).read_bytes(), cache.path(OTHER_SPACE, OTHER_VPN).read_bytes()
    other_success = other(agent.status())["api_last_success"]
    good_psk = lab.psks[0]
    long_psk = "A" * 70_000

    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=9000, interval=0.01) as pinger, \
            Pinger(lab.topology.cust_ns, SECOND_CUSTOMER_HOST_IP, OTHER_SPACE_HOST_IP, count=9000,
                   interval=0.01) as other_pinger:
        time.sleep(0.5)
        # Half the internet for the first; the space side drops the other's standby
        # tunnel, and the agent must initiate it again while it refuses the first's answer.
        fake_api.set_space_cidr_block(SPACE, VPN, "0.0.0.0/1")
        status = agent.wait_for(_api_error_with("space_cidr_block: 0.0.0.0/1 is not inside RFC 1918"), 15)
        initiated = agent.log_text().count(STANDBY_INITIATE)
        side.graceful_down(2)
        wait_until(lambda: ike_id(lab, OTHER_T2) not in (None, before[OTHER_T2]), 30)
        back = agent.wait_for(lambda s: is_redundant(s, index=1), 15)
        other_t1_at_back = ike_id(lab, OTHER_T1)
        reinitiated = agent.log_text().count(STANDBY_INITIATE)
        still_refused = agent.status()
        fake_api.set_space_cidr_block(SPACE, VPN, SPACE_CIDR)

        # A 70 000-character PSK for the first; the other's routable CIDRs grow (the
        # space side first, as Heroku updates AWS before its answer) and the change rolls.
        fake_api.set_psk(SPACE, VPN, 1, long_psk)
        psk_status = agent.wait_for(_api_error_with("tunnels[0].pre_shared_key: must be 8 to 64 characters"), 15)
        before_roll = {ike_id(lab, OTHER_T1), ike_id(lab, OTHER_T2)}
        side.reconfigure(remote_ts=OTHER_WIDER_CIDR)
        fake_api.set_routable_cidrs(OTHER_SPACE, OTHER_VPN, [OTHER_WIDER_CIDR])
        rolled = agent.wait_for(lambda s: other(s)["generation"] == 2 and both_redundant(s)
                                and all(t["generation"] == 2 for t in other(s)["tunnels"]), 60)
        psk_still_refused = agent.status()
        fake_api.set_psk(SPACE, VPN, 1, good_psk)

        # An error body full of newlines, for the first connection's requests only.
        fake_api.fail_next(3, status=422, error_id="invalid_params", message=HOSTILE_ERROR, only=(SPACE, VPN))
        error_status = agent.wait_for(_api_error_with("HTTP 422"), 15)
        agent.wait_for(lambda s: conn(s)["api_error"] is None, 15)
        time.sleep(1.0)
        flowed_throughout = pinger.running and other_pinger.running  # neither ran out of count
        result, other_result = pinger.stop(), other_pinger.stop()

    # The first connection: every hostile answer refused by name, nothing running changed.
    assert flowed_throughout
    assert result.lost <= LAB_FLOOR_PINGS, f"{result.lost} of {result.transmitted} pings lost"
    assert (ike_id(lab, T1), ike_id(lab, T2)) == (before[T1], before[T2])
    assert customer_sas(lab)[T1].installed_child.uniqueid == child
    assert cache.path(SPACE, VPN).read_bytes() == cached
    assert is_redundant(status) and is_redundant(psk_status) and is_redundant(error_status)
    assert "0.0.0.0/1" in conn(still_refused)["api_error"] and "pre_shared_key" in conn(psk_still_refused)["api_error"]
    assert long_psk not in conn(psk_status)["api_error"]
    assert "\n" not in conn(error_status)["api_error"] and "\x1b" not in conn(error_status)["api_error"]
    final = agent.status()
    assert conn(final)["generation"] == 1 and conn(final)["api_errors"].get("payload", 0) >= 2

    # The other connection, meanwhile: its dropped standby initiated again by the agent...
    assert reinitiated > initiated
    assert other_t1_at_back == before[OTHER_T1] and is_redundant(back, 1, index=1)
    # ...its CIDR update rolled over both tunnels, as the answer said...
    assert other(rolled)["failovers"][-1]["kind"] == "roll"
    assert {ike_id(lab, OTHER_T1), ike_id(lab, OTHER_T2)}.isdisjoint(before_roll)
    assert cache.path(OTHER_SPACE, OTHER_VPN).read_bytes() != other_cached
    # ...its own answers accepted throughout, and its traffic carried (the roll to new
    # selectors costs one Quick Mode in policy mode: a ping or two, README).
    assert other(error_status)["api_error"] is None and other(final)["api_errors"] == {}
    assert other(final)["api_last_success"] > other_success
    assert other_result.lost <= 2, f"{other_result.lost} of {other_result.transmitted} pings lost"
    assert_no_secret(agent.log_text() + repr(final), lab.every_psk)
