"""Route mode: new selectors replace a tunnel's CHILD_SA without a break: the new
child under the same IKE SA first, then the old one goes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.core.charon_objects import InitiateChild, LoadTunnel, TerminateChild, plan_loads, tunnel_fingerprint
from agent.core.desired import desired_connection
from agent.core.model import ConnectionStatus, Secret, Tunnel, VpnConnection
from agent.core.modes import Mode
from agent.core.observation import CharonState, ChildSa, IkeSa, TunnelSas
from agent.core.selector_roll import plan_selector_roll
from agent.core.tunnel_timing import TunnelTiming, reached_desired_state

OLD_CIDRS = ("172.16.0.0/16",)
NEW_CIDRS = ("172.16.0.0/16", "172.17.0.0/16")
SPACE = "10.0.0.0/16"


def conn(cidrs=NEW_CIDRS, mode=Mode.ROUTE, psk="k1.xxxxxxxx"):
    vpn = VpnConnection(
        id="1", name="office", public_ip="203.0.113.10", routable_cidrs=cidrs, space_cidr_block=SPACE,
        ike_version=2, status=ConnectionStatus.ACTIVE,
        tunnels=(Tunnel(1, "198.51.100.1", Secret(psk)), Tunnel(2, "198.51.100.2", Secret("k2.xxxxxxxx"))),
    )
    return desired_connection(key="acme-office", space="acme", vpn="office", local_address="203.0.113.10",
                              local_id=None, mode=mode, connection=vpn, source_address="172.16.0.2")


CONN = conn()
T1, T2 = (t.conn_name for t in CONN.tunnels)


def child(uniqueid: str, local=OLD_CIDRS, state="INSTALLED", name=T1) -> ChildSa:
    return ChildSa(name, uniqueid, state, local_ts=tuple(local), remote_ts=(SPACE,))


def charon(*children: ChildSa, tasks=()) -> CharonState:
    tunnel1 = TunnelSas((IkeSa(T1, "1", "ESTABLISHED", children=tuple(children), tasks_active=tuple(tasks)),))
    tunnel2 = TunnelSas((IkeSa(T2, "2", "ESTABLISHED", children=(child("9", NEW_CIDRS, name=T2),)),))
    return CharonState(True, sas={T1: tunnel1, T2: tunnel2})


def roll(state: CharonState, timing: TunnelTiming = TunnelTiming(), conn_=CONN):
    return plan_selector_roll(conn_, state, {T1: timing}, now=100.0)


def test_an_outdated_child_gets_its_successor_first():
    assert roll(charon(child("5"))) == [InitiateChild(T1)]


def test_once_the_successor_is_installed_the_old_child_goes():
    assert roll(charon(child("5"), child("6", NEW_CIDRS))) == [TerminateChild(T1, "5")]


def test_a_rekeyed_child_of_the_old_selectors_goes_with_the_installed_one():
    """An IKEv1 duplicate Quick Mode leaves the first child REKEYED with the old
    selectors: while it lives, charon keeps the old (more specific) policies."""
    state = charon(child("4", state="REKEYED"), child("5"), child("6", NEW_CIDRS))
    assert roll(state) == [TerminateChild(T1, "4"), TerminateChild(T1, "5")]
    # Before the successor is up, a rekeyed leftover changes nothing: one initiate.
    assert roll(charon(child("4", state="REKEYED"), child("5"))) == [InitiateChild(T1)]
    # Rekeyed children of the new selectors are a rekey's business.
    assert roll(charon(child("6", NEW_CIDRS, state="REKEYED"), child("7", NEW_CIDRS))) == []


@pytest.mark.parametrize("state", [
    charon(child("5"), tasks=("QUICK_MODE",)),  # its successor is being negotiated
    charon(child("5"), child("6", ("172.16.0.0/17",))),  # the far end narrowed it: nothing more to try
    charon(child("5", NEW_CIDRS)),  # nothing outdated
    charon(child("5", ())),  # charon did not say: taken as current
], ids=["negotiating", "narrowed", "current", "unreported"])
def test_nothing_to_do(state):
    assert roll(state) == []


def test_retries_wait_for_the_backoff():
    assert roll(charon(child("5")), TunnelTiming(next_attempt_at=101.0)) == []
    assert not reached_desired_state(charon(child("5")).tunnel(T1), True, CONN.tunnel(1).child_ts)
    assert reached_desired_state(charon(child("5"), child("6", NEW_CIDRS)).tunnel(T1), True, CONN.tunnel(1).child_ts)


def test_selectors_compare_as_networks():
    assert not child("5", ("172.17.0.0/16", "172.16.0.0/16")).outdated(CONN.tunnel(1).child_ts)
    assert not child("5", ("172.17.0.1/16", "172.16.0.0/16")).outdated(CONN.tunnel(1).child_ts)
    assert child("5", ("172.16.0.0/16",)).outdated(CONN.tunnel(1).child_ts)


def test_policy_mode_keeps_its_own_roll():
    policy = conn(mode=Mode.POLICY)
    assert plan_selector_roll(policy, charon(child("5")), {}, now=100.0) == []


def test_new_selectors_alone_reload_the_conn_and_keep_the_ike_sa():
    old = conn(OLD_CIDRS)
    loaded = {t.conn_name: tunnel_fingerprint(old, t.number) for t in old.tunnels}
    state = replace(charon(child("5")), conns=frozenset({T1, T2}))
    actions = plan_loads(CONN, loaded, state)
    assert [type(a) for a in actions] == [LoadTunnel, LoadTunnel]  # no TerminateIke
    rotated = conn(psk="k1.yyyyyyyy")
    actions = plan_loads(rotated, {t.conn_name: tunnel_fingerprint(CONN, t.number) for t in CONN.tunnels}, state)
    assert [type(a).__name__ for a in actions] == ["LoadTunnel", "TerminateIke"]
    policy_old, policy_new = conn(OLD_CIDRS, Mode.POLICY), conn(mode=Mode.POLICY)
    loaded = {t.conn_name: tunnel_fingerprint(policy_old, t.number) for t in policy_old.tunnels}
    assert "TerminateIke" in [type(a).__name__ for a in plan_loads(policy_new, loaded, state)]
