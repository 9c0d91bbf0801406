"""Several routable CIDRs: what the CHILD_SAs negotiate and when an answer cannot be
loaded (IKEv1 negotiates only a child's first selector). Property tests over every IKE
version, mode, selector choice and CIDR list; the VICI message carries them all."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from agent.adapters.charon_messages import load_conn_message
from agent.core.charon_objects import tunnel_fingerprint
from agent.core.desired import desired_connection
from agent.core.model import ConnectionStatus, Secret, Tunnel, VpnConnection
from agent.core.modes import Mode
from agent.core.selectors import ANY, TrafficSelectors, child_selectors, selector_problem

SPACE = "10.0.0.0/16"
cidrs = st.lists(st.builds(lambda third, prefix: str(ipaddress.ip_network(f"192.168.{third}.0/{prefix}",
                                                                          strict=False)),
                           st.integers(0, 255), st.integers(16, 30)),
                 min_size=1, max_size=5, unique=True)
modes = st.sampled_from(Mode)
resolved = st.sampled_from((Mode.ROUTE, Mode.POLICY))
choices = st.sampled_from(TrafficSelectors)


@given(st.sampled_from((1, 2)), modes, cidrs, choices)
def test_a_problem_exactly_when_ikev1_would_drop_a_cidr(ike_version, mode, routable, selectors):
    wide = selectors is TrafficSelectors.WIDE and mode is not Mode.POLICY  # AUTO: route mode may run
    dropped = ike_version == 1 and len(routable) > 1 and not wide
    assert (selector_problem(ike_version, mode, routable, selectors) is not None) == dropped


@given(modes, cidrs.filter(lambda c: len(c) > 1), choices)
def test_the_refusal_names_the_cidrs_and_every_fix(mode, routable, selectors):
    problem = selector_problem(1, mode, routable, selectors)
    if problem is None:
        return
    assert f"only {routable[0]} would cross" in problem
    assert all(cidr in problem for cidr in routable[1:])
    assert "IKEv2" in problem and "summarises" in problem and "traffic_selectors: wide" in problem
    assert ("in route mode" in problem) == (mode is Mode.POLICY)


@given(resolved, cidrs, choices)
def test_children_carry_every_cidr_or_wide_selectors_in_route_mode(mode, routable, selectors):
    local, remote = child_selectors(mode, selectors, routable, (SPACE,))
    if selectors is TrafficSelectors.WIDE and mode is Mode.ROUTE:
        assert (local, remote) == ((ANY,), (ANY,))
    else:
        assert (local, remote) == (tuple(routable), (SPACE,))


def vpn(routable: list[str], ike_version: int = 2) -> VpnConnection:
    return VpnConnection(
        id="1", name="office", public_ip="203.0.113.10", routable_cidrs=tuple(routable), space_cidr_block=SPACE,
        ike_version=ike_version, status=ConnectionStatus.ACTIVE,
        tunnels=(Tunnel(1, "198.51.100.1", Secret("k1.xxxxxxxx")), Tunnel(2, "198.51.100.2", Secret("k2.xxxxxxxx"))),
    )


def desired(routable: list[str], mode: Mode, selectors: TrafficSelectors = TrafficSelectors.CIDRS,
            ike_version: int = 2):
    return desired_connection(key="acme-space-office", space="acme-space", vpn="office",
                              local_address="203.0.113.10", local_id=None, mode=mode,
                              connection=vpn(routable, ike_version), selectors=selectors)


@given(resolved, cidrs)
def test_load_conn_sends_every_routable_cidr_in_one_child(mode, routable):
    conn = desired(routable, mode)
    for number in (1, 2):
        (ike,) = load_conn_message(conn, number).values()
        (child,) = ike["children"].values()
        assert child["local_ts"] == routable
        assert child["remote_ts"] == [SPACE]


def test_wide_selectors_in_the_load_conn_and_routes_still_to_the_space():
    conn = desired(["172.16.0.0/16", "192.168.50.0/24"], Mode.ROUTE, TrafficSelectors.WIDE, ike_version=1)
    (ike,) = load_conn_message(conn, 1).values()
    (child,) = ike["children"].values()
    assert (child["local_ts"], child["remote_ts"]) == ([ANY], [ANY])
    assert child["if_id_in"] == child["if_id_out"]  # bound to the tunnel's interface
    assert conn.remote_ts == (SPACE,)  # what route mode routes into the tunnels


def test_policy_mode_negotiates_the_cidrs_even_when_wide_is_configured():
    """`mode: auto` with wide selectors on a kernel without XFRM interfaces: 0.0.0.0/0
    policies there would take all of the host's traffic."""
    conn = desired(["172.16.0.0/16"], Mode.POLICY, TrafficSelectors.WIDE)
    assert conn.child_ts == (("172.16.0.0/16",), (SPACE,))


def test_switching_to_wide_selectors_reloads_the_tunnels():
    routable = ["172.16.0.0/16", "192.168.50.0/24"]
    narrow, wide = desired(routable, Mode.ROUTE), desired(routable, Mode.ROUTE, TrafficSelectors.WIDE)
    assert tunnel_fingerprint(narrow, 1) != tunnel_fingerprint(wide, 1)
