"""Route mode's pure decisions: interfaces, routes, which tunnel is active, MSS rules."""

from __future__ import annotations

import pytest

from agent.core.charon_objects import InitiateChild
from agent.core.desired import desired_connection
from agent.core.model import ConnectionStatus, Secret, Tunnel, VpnConnection
from agent.core.modes import Mode
from agent.core.netstate import ACTIVE_METRIC, STANDBY_METRIC, Link, NetState, Route, interface_id, interface_name
from agent.core.observation import CharonState, ChildSa, IkeSa, TunnelSas
from agent.core.route_mode import (
    DeleteRoute,
    EnsureInterface,
    RemoveInterface,
    Reroute,
    SetRoute,
    adopt_active_route,
    mss_rules,
    plan_interfaces,
    plan_reroute,
    plan_route_tunnels,
    plan_routes,
    plan_stale_interfaces,
)
from agent.core.tunnel_timing import TunnelTiming

KEY, VPN = "acme-space-office", "office"
IF1, IF2 = interface_name(KEY, VPN, 1), interface_name(KEY, VPN, 2)
T1, T2 = "svpn-acme-space-office-t1", "svpn-acme-space-office-t2"
DST = "10.0.0.0/16"
SRC = "172.16.0.2"


def conn(mode: Mode = Mode.ROUTE, mss: int = 1379):
    vpn = VpnConnection(
        id="1", name=VPN, public_ip="203.0.113.10", routable_cidrs=("172.16.0.0/16",), space_cidr_block=DST,
        ike_version=1, status=ConnectionStatus.ACTIVE,
        tunnels=(Tunnel(1, "198.51.100.1", Secret("k1.xxxxxxxx")), Tunnel(2, "198.51.100.2", Secret("k2.xxxxxxxx"))),
    )
    return desired_connection(key=KEY, space="acme-space", vpn=VPN, local_address="203.0.113.10", local_id=None,
                              mode=mode, connection=vpn, source_address=SRC, tunnel_mtu=1419, tcp_mss=mss)


CONN = conn()


def sas(*children_of: tuple[str, bool]) -> CharonState:
    """children_of: (conn name, has an INSTALLED child) for each established tunnel."""
    result = {}
    for index, (name, child) in enumerate(children_of):
        kids = (ChildSa(name, f"c{index}", "INSTALLED"),) if child else ()
        result[name] = TunnelSas((IkeSa(name, f"i{index}", "ESTABLISHED", children=kids),))
    return CharonState(True, sas=result)


def link(name: str, if_id: int, mtu: int = 1419, up: bool = True) -> Link:
    return Link(name, 10, "xfrm", if_id, mtu, up)


BOTH_UP = sas((T1, True), (T2, True))
LINKS = {IF1: link(IF1, interface_id(KEY, 1)), IF2: link(IF2, interface_id(KEY, 2))}


def test_names_fit_linux_and_ids_are_distinct_and_stable():
    assert len(IF1) <= 15 and IF1.startswith("svoffice") and IF1.endswith("-1")
    assert interface_id(KEY, 1) != interface_id(KEY, 2) and interface_id(KEY, 1) > 0
    assert interface_id(KEY, 1) == interface_id(KEY, 1)
    assert interface_name("a-very-long-space-name-x", "a-very-long-vpn-name", 2).endswith("-2")
    assert len(interface_name("a-very-long-space-name-x", "a-very-long-vpn-name", 2)) <= 15


def test_desired_route_mode_carries_interfaces_and_if_ids():
    assert [(t.interface, t.if_id) for t in CONN.tunnels] == [(IF1, interface_id(KEY, 1)), (IF2, interface_id(KEY, 2))]
    assert all(t.interface is None and t.if_id is None for t in conn(Mode.POLICY).tunnels)


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        ({}, [EnsureInterface(IF1, interface_id(KEY, 1), 1419), EnsureInterface(IF2, interface_id(KEY, 2), 1419)]),
        (LINKS, []),
        ({**LINKS, IF2: link(IF2, interface_id(KEY, 2), mtu=1500)}, [EnsureInterface(IF2, interface_id(KEY, 2), 1419)]),
        ({**LINKS, IF1: link(IF1, interface_id(KEY, 1), up=False)}, [EnsureInterface(IF1, interface_id(KEY, 1), 1419)]),
        ({**LINKS, IF1: link(IF1, 99)}, [EnsureInterface(IF1, interface_id(KEY, 1), 1419)]),
    ],
    ids=["create", "steady", "mtu", "down", "foreign-if-id"],
)
def test_plan_interfaces(links, expected):
    assert plan_interfaces(CONN, NetState(links=links)) == expected


def test_stale_interfaces_only_of_unconfigured_connections():
    other = interface_name("old-space-gone", "gone", 1)
    net = NetState(links={**LINKS, other: link(other, 5), "svx": Link("svx", 3, "vti", None, 1400, True)})
    assert plan_stale_interfaces([(KEY, VPN)], net) == [RemoveInterface(other)]


@pytest.mark.parametrize(
    ("charon", "routes", "active", "expected"),
    [
        # cold: both children up -> active route + standby route
        (BOTH_UP, (), 1, [SetRoute(DST, IF1, ACTIVE_METRIC, SRC), SetRoute(DST, IF2, STANDBY_METRIC, SRC)]),
        # standby has no child: no standby route
        (sas((T1, True), (T2, False)), (), 1, [SetRoute(DST, IF1, ACTIVE_METRIC, SRC)]),
        # steady state: nothing
        (BOTH_UP, (Route(DST, IF1, ACTIVE_METRIC, SRC), Route(DST, IF2, STANDBY_METRIC, SRC)), 1, []),
        # failover: two in-place replacements, nothing deleted, interfaces untouched
        (BOTH_UP, (Route(DST, IF1, ACTIVE_METRIC, SRC), Route(DST, IF2, STANDBY_METRIC, SRC)), 2,
         [SetRoute(DST, IF2, ACTIVE_METRIC, SRC), SetRoute(DST, IF1, STANDBY_METRIC, SRC)]),
        # the standby child went away: its route goes
        (sas((T1, True), (T2, False)), (Route(DST, IF1, ACTIVE_METRIC, SRC), Route(DST, IF2, STANDBY_METRIC, SRC)), 1,
         [DeleteRoute(DST, IF2, STANDBY_METRIC)]),
    ],
    ids=["cold", "no-standby-child", "steady", "failover", "standby-lost"],
)
def test_plan_routes(charon, routes, active, expected):
    assert plan_routes(CONN, charon, NetState(links=LINKS, routes=routes), active) == expected


@pytest.mark.parametrize(
    ("routes", "preferred", "expected"),
    [
        ((), None, 1),  # fresh start, nothing routed: tunnel 1
        ((), 2, 2),  # fresh start with a preference
        ((Route(DST, IF2, ACTIVE_METRIC, SRC),), None, 2),  # restart: adopt what the kernel routes
        ((Route(DST, IF2, ACTIVE_METRIC, SRC),), 1, 2),  # ... even against the preference
        ((Route(DST, IF1, STANDBY_METRIC, SRC),), None, 1),  # only a standby route: not adopted
    ],
    ids=["fresh", "fresh-preferred", "adopt", "adopt-beats-preference", "standby-route-only"],
)
def test_adopt_active_route(routes, preferred, expected):
    assert adopt_active_route(CONN, NetState(links=LINKS, routes=routes), preferred) == expected


def test_both_tunnels_get_a_child_in_route_mode():
    assert plan_route_tunnels(CONN, sas(), {}, 100.0) == [InitiateChild(T1), InitiateChild(T2)]
    assert plan_route_tunnels(CONN, sas((T1, True), (T2, False)), {}, 100.0) == [InitiateChild(T2)]
    gated = {T2: TunnelTiming(attempts=1, next_attempt_at=101.0)}
    assert plan_route_tunnels(CONN, sas((T1, True), (T2, False)), gated, 100.0) == []


@pytest.mark.parametrize("task", ["QUICK_MODE", "CHILD_CREATE"])
def test_no_second_initiate_while_a_child_is_negotiated(task):
    """IKEv1 with a slow far end: the backoff runs out while the Quick Mode is still in
    flight; a second one would leave the first child REKEYED beside its duplicate."""
    negotiating = TunnelSas((IkeSa(T2, "i1", "ESTABLISHED", tasks_active=(task,)),))
    state = CharonState(True, sas={**sas((T1, True)).sas, T2: negotiating})
    assert plan_route_tunnels(CONN, state, {}, 100.0) == []
    idle = CharonState(True, sas={**sas((T1, True)).sas, T2: TunnelSas((IkeSa(T2, "i1", "ESTABLISHED",
                                                                            tasks_active=("ISAKMP_DPD",)),))})
    assert plan_route_tunnels(CONN, idle, {}, 100.0) == [InitiateChild(T2)]


@pytest.mark.parametrize("charon, active, expected", [
    (BOTH_UP, 1, Reroute(T1, CONN.label, 1, 2, (SetRoute(DST, IF2, ACTIVE_METRIC, SRC),), frozenset({"c0"}))),
    (BOTH_UP, 2, Reroute(T2, CONN.label, 2, 1, (SetRoute(DST, IF1, ACTIVE_METRIC, SRC),), frozenset({"c1"}))),
    (sas((T1, True), (T2, False)), 1, None),  # the standby has no CHILD_SA: nowhere to go
    (sas((T1, True)), 1, None),
    (BOTH_UP, None, None),  # no active tunnel yet
])
def test_plan_reroute(charon, active, expected):
    assert plan_reroute(CONN, charon, active) == expected


def test_no_reroute_in_policy_mode():
    assert plan_reroute(conn(Mode.POLICY), BOTH_UP, 1) is None


def test_mss_rules_cover_every_route_mode_interface():
    assert mss_rules([CONN]) == {IF1: 1379, IF2: 1379}
    assert mss_rules([conn(mss=0)]) == {}
    assert mss_rules([conn(Mode.POLICY)]) == {}


class CountedRoutes(tuple):
    """The kernel's routes, counting how often something walks through all of them."""

    def __new__(cls, routes):
        counted = super().__new__(cls, routes)
        counted.walks = 0
        return counted

    def __iter__(self):
        self.walks += 1
        return super().__iter__()


@pytest.mark.parametrize("count", [20, 200])
def test_planning_the_routes_of_n_connections_walks_the_kernels_routes_once_not_n_times(count):
    conns = []
    for n in range(count):
        key, vpn = f"acme-space-office{n}", f"office{n}"
        tunnels = (Tunnel(1, f"198.51.100.{n % 200 + 1}", Secret("k1.xxxxxxxx")),
                   Tunnel(2, f"203.0.113.{n % 200 + 20}", Secret("k2.xxxxxxxx")))
        vpn_conn = VpnConnection(id=str(n), name=vpn, public_ip="203.0.113.10", routable_cidrs=("172.16.0.0/16",),
                                 space_cidr_block=f"10.{n // 200}.{n % 200}.0/24", ike_version=1,
                                 status=ConnectionStatus.ACTIVE, tunnels=tunnels)
        conns.append(desired_connection(key=key, space="acme-space", vpn=vpn, local_address="203.0.113.10",
                                        local_id=None, mode=Mode.ROUTE, connection=vpn_conn, source_address=SRC,
                                        tunnel_mtu=1419, tcp_mss=1379))
    routes = CountedRoutes(Route(c.remote_ts[0], c.tunnel(1).interface, ACTIVE_METRIC, SRC) for c in conns)
    net = NetState(routes=routes)
    charon = CharonState(True)
    assert all(plan_routes(c, charon, net, 1) == [] for c in conns)  # every route in place already
    assert all(adopt_active_route(c, net, None) == 1 for c in conns)
    assert routes.walks == 1
