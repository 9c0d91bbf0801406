"""Everything decided for one connection in one pass, as one pure function: timing,
health, the failover step, and the charon and kernel actions that carry it out.

The two modes share the failover state machine; only the actuator differs: policy
mode brings the new tunnel's CHILD_SA up before the old one goes (make-before-break),
route mode moves the route (both CHILD_SAs stay up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from agent.core.charon_objects import INITIATES, CharonAction
from agent.core.desired import DesiredConnection
from agent.core.failover import FailoverState, assess, step
from agent.core.health import InboundWatch, ProbeStats, TrafficTotals
from agent.core.memory import ConnectionMemory, ConnectionSettings, FailoverRecord
from agent.core.model import TunnelApiStatus
from agent.core.modes import Mode
from agent.core.netstate import NetState
from agent.core.observation import CharonState, TunnelSas
from agent.core.policy_mode import adopt_active, plan_policy_mode
from agent.core.recovery import plan_replace_broken, plan_stuck
from agent.core.selector_roll import plan_selector_roll
from agent.core.route_mode import RouteAction, adopt_active_route, plan_route_tunnels, plan_routes
from agent.core.tunnel_timing import TunnelTiming, observe_timing, reached_desired_state
from agent.core.verdicts import connection_verdict


@dataclass(frozen=True)
class ConnectionStep:
    """One connection's share of a pass: what to do, and the memory to keep after it."""

    key: str
    label: str
    memory: ConnectionMemory
    failover: FailoverRecord | None  # set when traffic moves in this pass
    charon_actions: tuple[CharonAction, ...]
    net_actions: tuple[RouteAction, ...]


def decide(settings: ConnectionSettings, memory: ConnectionMemory, conn: DesiredConnection,
           charon: CharonState, net: NetState, now: float, wall_now: float,
           jitter: Mapping[str, float], *, heroku_now: float, retiring: int | None = None) -> ConnectionStep:
    """One pass for one connection whose far end is known. `now` monotonic, `wall_now`
    unix time, `jitter` (by conn name, in [0, 1)) spreads retries, `retiring` the tunnel
    a settings roll moves traffic off (core/rolling), `heroku_now` unix time by Heroku's
    clock (core/lifecycle.heroku_now), which its DOWN timestamps are compared on. No
    side effects."""
    route = conn.mode is Mode.ROUTE
    sas = {t.number: charon.tunnel(t.conn_name) for t in conn.tunnels}
    timing = {t.conn_name: observe_timing(memory.timing.get(t.conn_name, TunnelTiming()), sas[t.number], now)
              for t in conn.tunnels}
    state = memory.failover
    if state is None:
        preferred = settings.policy.preferred
        adopted = adopt_active_route(conn, net, preferred) if route else adopt_active(conn, charon, preferred)
        state = FailoverState(active=adopted)
    previous = state.active
    inbound = _watch_inbound(memory.inbound, sas, previous, route, now)
    health = {
        t.number: assess(
            sas=sas[t.number], route_mode=route, is_active=t.number == previous,
            ever_usable=timing[t.conn_name].ever_installed if route else timing[t.conn_name].ever_established,
            unusable_since=timing[t.conn_name].uninstalled_since if route else timing[t.conn_name].unestablished_since,
            probes=_fresh(current_probes(memory.probes.get(t.number), sas[t.number]), now),
            probe_failures=settings.probe.failures,
            inbound=inbound if t.number == previous else None,
            api_status=t.api_status, api_down_since=_api_down_since(conn, t.number),
            sa_established_at=_established_at(sas[t.number], heroku_now),
            drained=t.number in memory.drained, now=now,
            exchange_pending_since=timing[t.conn_name].exchange_pending_since, retiring=t.number == retiring,
        )
        for t in conn.tunnels
    }
    state, reason = step(state, health, settings.policy, now)
    active = state.active
    for t in conn.tunnels:  # a new goal, or a goal reached, starts the backoff afresh
        switched_to = reason is not None and t.number == active
        if switched_to or reached_desired_state(sas[t.number], wants_child=route or t.number == active,
                                                child_ts=t.child_ts if route else None):
            timing[t.conn_name] = timing[t.conn_name].goal_reset()

    actions = plan_stuck(conn, charon, timing, now, settings.connect_timeout)
    if route:
        actions += plan_route_tunnels(conn, charon, timing, now)
        actions += plan_selector_roll(conn, charon, timing, now)
        net_actions = plan_routes(conn, charon, net, active)
    else:
        actions += plan_policy_mode(conn, charon, active, timing, now)
        net_actions = []
    actions += plan_replace_broken(conn, charon, active, health)
    for action in actions:  # every initiate planned here counts for the backoff
        if isinstance(action, INITIATES):
            timing[action.conn_name] = timing[action.conn_name].initiated(now, jitter.get(action.conn_name, 0.5))

    record = FailoverRecord(wall_now, previous, active, reason) if reason is not None else None
    memory = replace(
        memory, desired=conn, failover=state, timing=timing, inbound=inbound, health=health,
        verdict=connection_verdict(health, active, charon.reachable),
        traffic=_traffic(memory.traffic, conn, charon),
    )
    if record is not None:
        memory = memory.with_failover(record)
    return ConnectionStep(conn.key, conn.label, memory, record, tuple(actions), tuple(net_actions))


def current_probes(stats: ProbeStats | None, sas: TunnelSas) -> ProbeStats | None:
    """Probe results count only for the IKE SA they crossed: a re-established tunnel
    starts with a clean slate."""
    ike = sas.established_ike
    if stats is None or ike is None or stats.sa_id != ike.uniqueid:
        return None
    return stats


def _fresh(stats: ProbeStats | None, now: float) -> ProbeStats | None:
    """Judge the present: a tunnel no longer probed (policy mode's standby after a move)
    keeps its last results for status, but they stop counting for its health."""
    return None if stats is None or stats.stale(now) else stats


def _traffic(traffic: Mapping[int, TrafficTotals], conn: DesiredConnection,
             charon: CharonState) -> dict[int, TrafficTotals]:
    return {t.number: traffic.get(t.number, TrafficTotals()).update(charon.tunnel(t.conn_name).children)
            for t in conn.tunnels}


def _watch_inbound(watch: InboundWatch | None, sas: Mapping[int, TunnelSas], active: int, route: bool,
                   now: float) -> InboundWatch | None:
    """Packets out over the active tunnel against packets in. Route mode sums the inbound
    of both tunnels: AWS answers over whichever one it picked."""
    child = sas[active].installed_child
    if child is None:
        return None
    inbound = [c for s in sas.values() for c in (s.installed_child,) if c is not None] if route else [child]
    ids = "+".join(c.uniqueid for c in inbound)
    return (watch or InboundWatch()).update(ids, sum(c.packets_in for c in inbound), child.packets_out, now)


def _api_down_since(conn: DesiredConnection, number: int) -> float | None:
    tunnel = conn.tunnel(number)
    if tunnel.api_status is not TunnelApiStatus.DOWN:
        return None
    return parse_timestamp(tunnel.last_status_change)


def parse_timestamp(text: str) -> float | None:
    """The API's "2016-10-25T22:09:05Z" as unix time; None when absent or malformed."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def _established_at(sas: TunnelSas, heroku_now: float) -> float | None:
    ike = sas.established_ike
    if ike is None or ike.established is None:
        return None
    return heroku_now - ike.established


