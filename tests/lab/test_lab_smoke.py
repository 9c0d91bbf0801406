"""Smoke test of the lab itself: two real charons negotiate IKEv1 over the veth pair,
traffic crosses the userspace tunnel, and the space side's knobs act on the customer.
The customer charon is configured by hand here; the agent does it in later tests.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from space_vpn_lab.lab import Lab
from space_vpn_lab.space_side import PROPOSAL
from space_vpn_lab.topology import (CUSTOMER_PUBLIC_IP, ROUTABLE_CIDR, SPACE_CIDR, TUNNEL_IPS,
                                    list_netns)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab needs root (namespaces, charon)"),
]

INITIATE_TIMEOUT_MS = 15_000
CONN = "cust-t1"


def _prefix() -> str:
    # Unique per test process: other people may run a lab with the default prefix.
    return "svs%d" % (os.getpid() % 100_000)


def _configure_customer_tunnel1(lab: Lab) -> None:
    """What the agent will do for tunnel 1, written out by hand (PSK passed inline so
    no local variable holds it: pytest --showlocals must not reveal it)."""
    with lab.customer_charon.connected() as session:
        session.load_shared({"id": CONN, "type": "IKE", "data": lab.psks[0],
                             "owners": [CUSTOMER_PUBLIC_IP, TUNNEL_IPS[0]]})
        session.load_conn({CONN: {
            "version": "1",
            "local_addrs": [CUSTOMER_PUBLIC_IP],
            "remote_addrs": [TUNNEL_IPS[0]],
            "proposals": [PROPOSAL],
            "dpd_delay": "10s",
            "dpd_timeout": "30s",
            "local": {"auth": "psk", "id": CUSTOMER_PUBLIC_IP},
            "remote": {"auth": "psk", "id": TUNNEL_IPS[0]},
            "children": {CONN: {
                "local_ts": [ROUTABLE_CIDR],
                "remote_ts": [SPACE_CIDR],
                "esp_proposals": [PROPOSAL],
                "start_action": "none",
            }},
        }})


def _initiate(lab: Lab) -> None:
    with lab.customer_charon.connected() as session:
        # Streamed call: nothing happens until drained; the timeout bounds it.
        list(session.initiate({"child": CONN, "ike": CONN, "timeout": INITIATE_TIMEOUT_MS}))


def _customer_states(lab: Lab) -> tuple[str | None, list[str]]:
    with lab.customer_charon.connected() as session:
        entries = list(session.list_sas())
    for entry in entries:
        ike = entry.get(CONN)
        if ike is not None:
            children = [c["state"].decode() for c in (ike.get("child-sas") or {}).values()]
            return ike["state"].decode(), children
    return None, []


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_tunnel_up_ping_and_graceful_down(tmp_path):
    with Lab(tmp_path, prefix=_prefix(), ike_version=1) as lab:
        assert lab.customer_charon.running and lab.space_charon.running
        _configure_customer_tunnel1(lab)
        began = time.monotonic()
        _initiate(lab)
        up_s = time.monotonic() - began

        ike_state, child_states = _customer_states(lab)
        assert ike_state == "ESTABLISHED"
        assert child_states == ["INSTALLED"]
        assert _wait_for(lambda: lab.space.sas()[1].up)
        space = lab.space.sas()
        assert space[1].ike_state == "ESTABLISHED"
        assert space[1].child_states == ("INSTALLED",)
        assert space[2].ike_state is None, "the responder must not bring tunnel 2 up by itself"
        assert up_s < INITIATE_TIMEOUT_MS / 1000

        result = lab.customer_ping(count=5, interval=0.2)
        assert result.transmitted == 5
        assert result.received >= 4

        lab.space.graceful_down(1)
        assert _wait_for(lambda: _customer_states(lab)[0] is None)
        assert lab.space.sas()[1].ike_state is None
        # Nothing re-initiates by itself: the tunnel is down and traffic stops.
        assert lab.customer_ping(count=2, interval=0.2).received == 0


def test_close_leaves_nothing_behind(tmp_path):
    prefix = _prefix()
    lab = Lab(tmp_path, prefix=prefix)
    with lab:
        pids = [lab.customer_charon.pid, lab.space_charon.pid]
        assert all(pid is not None for pid in pids)
        assert {f"{prefix}-cust", f"{prefix}-space"} <= set(list_netns())
    assert not [ns for ns in list_netns() if ns.startswith(prefix + "-")]
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), "charon pid %s survived close()" % pid
    lab.close()  # idempotent
    assert lab.customer_charon.pid is None and lab.space_charon.pid is None


def test_silent_down_blackholes_and_restore_lifts(tmp_path):
    with Lab(tmp_path, prefix=_prefix()) as lab:
        _configure_customer_tunnel1(lab)
        _initiate(lab)
        assert lab.customer_ping(count=3, interval=0.2).received >= 2

        lab.space.silent_down(1)
        assert lab.space.blocked_ips() == [TUNNEL_IPS[0]]
        assert lab.space.sas()[1].ike_state is None
        # The customer was not told: its SA is still there, but traffic is lost.
        assert _customer_states(lab)[0] == "ESTABLISHED"
        assert lab.customer_ping(count=3, interval=0.2).received == 0

        lab.space.restore(1)
        assert lab.space.blocked_ips() == []


def test_refuses_non_lab_destination():
    from space_vpn_lab.traffic import TrafficError, ping
    with pytest.raises(TrafficError):
        ping("nonexistent-ns", "172.16.0.2", "8.8.8.8", count=1)
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "nonexistent-ns" not in out
