"""Route mode's decisions: both tunnels carry a CHILD_SA on their own XFRM interface,
inbound is accepted on both, and the agent steers outbound with routes.

Failover moves a route; it never takes an interface down (that drops inbound on it).
Pure functions, no side effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.charon_objects import InitiateChild
from agent.core.desired import DesiredConnection
from agent.core.modes import Mode
from agent.core.netstate import ACTIVE_METRIC, INTERFACE_PREFIX, STANDBY_METRIC, NetState, Route, interface_name
from agent.core.observation import CharonState, ChildState
from agent.core.tunnel_timing import TunnelTiming, needs_child_initiate


@dataclass(frozen=True)
class EnsureInterface:
    """Create the XFRM interface, or fix its MTU / bring it up."""

    name: str
    if_id: int
    mtu: int


@dataclass(frozen=True)
class RemoveInterface:
    """Only for interfaces of connections no longer configured (explicit teardown)."""

    name: str


@dataclass(frozen=True)
class SetRoute:
    dst: str
    ifname: str
    metric: int
    src: str | None


@dataclass(frozen=True)
class DeleteRoute:
    dst: str
    ifname: str
    metric: int


RouteAction = EnsureInterface | RemoveInterface | SetRoute | DeleteRoute


def adopt_active_route(conn: DesiredConnection, net: NetState, preferred: int | None) -> int:
    """Route mode at agent start: the tunnel the kernel already routes through keeps
    the traffic, so a restart moves nothing; else the preferred tunnel, else 1."""
    return _routed_tunnel(conn, net) or preferred or 1


def _routed_tunnel(conn: DesiredConnection, net: NetState) -> int | None:
    routes = [r for r in net.routes_to(conn.remote_ts[0]) if r.metric == ACTIVE_METRIC]
    by_interface = {t.interface: t.number for t in conn.tunnels}
    return next((by_interface[r.ifname] for r in routes if r.ifname in by_interface), None)


def plan_route_tunnels(
    conn: DesiredConnection,
    charon: CharonState,
    timing: Mapping[str, TunnelTiming],
    now: float,
) -> list[InitiateChild]:
    """Both tunnels want a live CHILD_SA."""
    return [InitiateChild(t.conn_name) for t in conn.tunnels
            if needs_child_initiate(charon.tunnel(t.conn_name), timing.get(t.conn_name, TunnelTiming()), now)]


def plan_interfaces(conn: DesiredConnection, net: NetState) -> list[RouteAction]:
    actions: list[RouteAction] = []
    for tunnel in conn.tunnels:
        assert tunnel.interface is not None and tunnel.if_id is not None
        link = net.links.get(tunnel.interface)
        if link is None or link.if_id != tunnel.if_id or link.mtu != conn.tunnel_mtu or not link.up:
            actions.append(EnsureInterface(tunnel.interface, tunnel.if_id, conn.tunnel_mtu))
    return actions


def plan_routes(conn: DesiredConnection, charon: CharonState, net: NetState, active: int) -> list[RouteAction]:
    """Route(s) to the space via the active tunnel; via the standby tunnel at a higher
    metric only while its CHILD_SA is installed. Anything else via our interfaces goes."""
    standby = conn.tunnel(3 - active)
    wanted = [(conn.tunnel(active).interface, ACTIVE_METRIC)]
    if charon.tunnel(standby.conn_name).installed_child is not None:
        wanted.append((standby.interface, STANDBY_METRIC))
    ours = {t.interface for t in conn.tunnels}
    actions: list[RouteAction] = []
    for dst in conn.remote_ts:
        existing = net.routes_to(dst)
        for ifname, metric in wanted:
            route = Route(dst, ifname, metric, conn.source_address)
            if route not in existing:
                actions.append(SetRoute(dst, ifname, metric, conn.source_address))
        # A SetRoute replaces the route of the same metric in place (no gap), so only
        # routes at metrics nobody wants any more are deleted.
        wanted_metrics = {metric for _, metric in wanted}
        actions += [
            DeleteRoute(dst, route.ifname, route.metric)
            for route in existing
            if route.ifname in ours and route.metric not in wanted_metrics
        ]
    return actions


@dataclass(frozen=True)
class Reroute:
    """Armed for one route-mode connection: when `trigger` (the active tunnel's CHILD_SA)
    goes down, `routes` move the traffic to the other tunnel at once."""

    trigger: str
    label: str
    from_tunnel: int
    to_tunnel: int
    routes: tuple[SetRoute, ...]
    # The active tunnel's installed CHILD_SAs when armed: while a selector roll or a
    # rekey holds two, the first going down is no reason to move.
    children: frozenset[str] = frozenset()


def plan_reroute(conn: DesiredConnection, charon: CharonState, active: int | None) -> Reroute | None:
    """The move to arm, or None: only in route mode, and only towards a tunnel whose
    CHILD_SA is installed (elsewhere the traffic would be lost all the same)."""
    if conn.mode is not Mode.ROUTE or active is None:
        return None
    other = conn.tunnel(3 - active)
    if charon.tunnel(other.conn_name).installed_child is None:
        return None
    assert other.interface is not None  # route mode names every tunnel's interface
    routes = tuple(SetRoute(dst, other.interface, ACTIVE_METRIC, conn.source_address) for dst in conn.remote_ts)
    trigger = conn.tunnel(active).conn_name
    children = frozenset(c.uniqueid for c in charon.tunnel(trigger).children if c.state == ChildState.INSTALLED)
    return Reroute(trigger, conn.label, active, other.number, routes, children)


def plan_stale_interfaces(configured: list[tuple[str, str]], net: NetState) -> list[RouteAction]:
    """Remove our XFRM interfaces whose connection is no longer in the config.

    `configured` lists (key, vpn) of every configured connection, whatever its mode or
    API state, so an unreachable API never removes an interface."""
    names = {interface_name(key, vpn, n) for key, vpn in configured for n in (1, 2)}
    return [
        RemoveInterface(link.name)
        for link in sorted(net.links.values(), key=lambda link: link.name)
        if link.kind == "xfrm" and link.name.startswith(INTERFACE_PREFIX) and link.name not in names
    ]


def mss_rules(conns: list[DesiredConnection]) -> dict[str, int]:
    """Interface -> TCP MSS to clamp SYNs to, for every route-mode tunnel interface."""
    return {
        t.interface: conn.tcp_mss
        for conn in conns
        for t in conn.tunnels
        if t.interface is not None and conn.tcp_mss > 0
    }
