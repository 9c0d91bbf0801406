"""The VPN connection's whole life as the Platform API shows it, against real charon
daemons in policy mode: created (404, then pending), failed, reordered, updated,
re-created by Heroku with new keys and endpoint IPs, and deleted for good. Traffic is
checked where it must not stop; outage figures live in `space-vpn-lab bench`."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from space_vpn_lab.agent_process import is_redundant
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.lab import generate_psk
from space_vpn_lab.topology import CUSTOMER_HOST_IP, SPACE_HOST_IP
from space_vpn_lab.traffic import Pinger
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, T2, assert_no_secret, customer_sas

pytestmark = pytest.mark.lab

PROBE = {"target": SPACE_HOST_IP, "interval": "100ms", "failures": 3}


def make(make_agent, *, api: dict | None = None):
    agent = make_agent(poll_interval="1s")
    config = yaml.safe_load(agent.config_path.read_text())
    config["connections"][0].update({"probe": PROBE, "mode": "policy"})
    config["api"].update(api or {})
    agent.write_config(config)
    return agent


def conn(status: dict) -> dict:
    return status["connections"][0]


def ike_ids(lab) -> dict[str, str]:
    return {name: sas.established_ike.uniqueid for name, sas in customer_sas(lab).items()
            if sas.established_ike is not None}


def agentctl_status(agent) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, "status"],
                          capture_output=True, text=True, timeout=30)


def test_created_404_then_pending_then_active(lab, make_agent, fake_api):
    fake_api.hide(SPACE, VPN)
    agent = make(make_agent)
    agent.start()
    status = agent.wait_for(lambda s: conn(s)["stage"] == "waiting", 20)
    assert "not found yet" in conn(status)["heroku_note"] and "waiting for Heroku" in conn(status)["summary"]

    fake_api.hide(SPACE, VPN, False)
    fake_api.set_connection_status(SPACE, VPN, "pending", "creating the VPN gateway")
    status = agent.wait_for(lambda s: conn(s)["connection_status"] == "pending", 20)
    assert conn(status)["summary"] == "waiting for Heroku: the VPN connection is pending: creating the VPN gateway"
    assert customer_sas(lab) == {}
    assert "waiting for Heroku" in agentctl_status(agent).stdout

    fake_api.set_connection_status(SPACE, VPN, "active")
    status = agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    assert conn(status)["stage"] == "active" and conn(status)["generation"] == 1
    assert lab.customer_ping(count=3, interval=0.2).received == 3


def test_failed_shows_the_message_exits_2_and_keeps_polling(lab, make_agent, fake_api):
    fake_api.set_connection_status(SPACE, VPN, "failed", "supplied CIDR block already in use")
    agent = make(make_agent)
    agent.start()
    status = agent.wait_for(lambda s: conn(s)["stage"] == "failed", 20)
    assert "supplied CIDR block already in use" in conn(status)["summary"]
    result = agentctl_status(agent)
    assert result.returncode == 2
    assert "Heroku: Heroku reports the VPN connection failed: supplied CIDR block already in use" in result.stdout
    assert "failed: supplied CIDR block already in use" in agent.log_text()
    assert customer_sas(lab) == {}

    fake_api.set_connection_status(SPACE, VPN, "active")  # the operator fixed it at Heroku
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    assert agentctl_status(agent).returncode == 0


def test_a_reordered_answer_changes_nothing(lab, make_agent, fake_api):
    agent = make(make_agent)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before = ike_ids(lab)
    child = customer_sas(lab)[T1].installed_child.uniqueid
    requests = len(fake_api.requests)
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=300, interval=0.01) as pinger:
        fake_api.reorder_tunnels(SPACE, VPN)
        deadline = time.monotonic() + 10
        while len(fake_api.requests) < requests + 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # three answers of the reordered list at least
        result = pinger.wait()
    assert len(fake_api.requests) >= requests + 3
    assert ike_ids(lab) == before and customer_sas(lab)[T1].installed_child.uniqueid == child
    assert result.lost == 0
    status = agent.status()
    assert conn(status)["generation"] == 1 and is_redundant(status)
    assert [t["ip"] for t in conn(status)["tunnels"]] == list(lab.tunnel_ips)


def test_a_routable_cidr_update_rolls_without_loss(lab, make_agent, fake_api):
    """IKEv1 (one selector pair per tunnel): 172.16.0.0/16 becomes 172.16.0.0/12.
    Tunnel 2 takes it first, traffic moves to it, then tunnel 1 follows."""
    agent = make(make_agent)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    before = ike_ids(lab)
    lab.space.reconfigure(remote_ts="172.16.0.0/12")  # Heroku updates AWS, then its answer
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=1500, interval=0.01) as pinger:
        time.sleep(0.5)
        fake_api.set_routable_cidrs(SPACE, VPN, ["172.16.0.0/12"])
        status = agent.wait_for(lambda s: conn(s)["generation"] == 2 and is_redundant(s, active=2)
                                and all(t["generation"] == 2 for t in conn(s)["tunnels"]), 40)
        result = pinger.stop()
    assert result.lost <= 2, f"{result.lost} of {result.transmitted} pings lost"
    failover = conn(status)["failovers"][-1]
    assert (failover["kind"], failover["from_tunnel"], failover["to_tunnel"]) == ("roll", 1, 2)
    after = ike_ids(lab)
    assert after[T1] != before[T1] and after[T2] != before[T2]  # both rebuilt, one at a time
    assert lab.customer_ping(count=3, interval=0.2).received == 3


def test_heroku_recreates_the_vpn_with_new_keys_and_endpoints(lab, make_agent, fake_api, secrets_of):
    agent = make(make_agent)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    new_psks, new_ips = [generate_psk(), generate_psk()], ["198.51.100.3", "198.51.100.4"]

    fake_api.hide(SPACE, VPN)  # spaces:vpn:destroy
    lab.recreate_vpn(new_psks, new_ips)
    status = agent.wait_for(lambda s: conn(s)["stage"] == "gone", 20)
    assert "unloaded in" in conn(status)["heroku_note"]
    fake_api.hide(SPACE, VPN, False)
    fake_api.recreate(SPACE, VPN, psks=new_psks, tunnel_ips=new_ips)  # spaces:vpn:connect: pending
    agent.wait_for(lambda s: conn(s)["connection_status"] == "pending", 20)
    fake_api.set_connection_status(SPACE, VPN, "active")
    status = agent.wait_for(lambda s: (is_redundant(s, 1) or is_redundant(s, 2)) and conn(s)["generation"] == 2,
                            BRINGUP_TIMEOUT)
    assert sorted(t["ip"] for t in conn(status)["tunnels"]) == new_ips
    assert lab.customer_ping(count=3, interval=0.2).received == 3
    log = agent.log_text()
    assert "deleted at Heroku" in log
    assert_no_secret(log + repr(status), (*secrets_of, *new_psks))


def test_a_connection_deleted_for_good_is_unloaded_after_the_grace(lab, make_agent, fake_api):
    agent = make(make_agent, api={"forget_deleted_after": "4s"})
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    fake_api.set_connection_status(SPACE, VPN, "deleted")
    status = agent.wait_for(lambda s: conn(s)["stage"] == "gone", 20)
    assert is_redundant(status)  # kept while the grace runs
    status = agent.wait_for(lambda s: conn(s)["stage"] == "forgotten", 20)
    deadline = time.monotonic() + 10
    while customer_sas(lab) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert customer_sas(lab) == {}
    with lab.customer_charon.connected() as session:
        names = {c.decode() if isinstance(c, bytes) else c for c in session.get_conns()["conns"]}
    assert not names & {T1, T2}
    assert conn(status)["health"] == "down" and "unloaded" in conn(status)["summary"]
    assert "deleted at Heroku" in agent.log_text()
    assert not list((agent.workdir / "state").glob("vpn-*.json"))  # a restart does not revive it
