"""Everything decided for one connection in one pass, as one pure function: timing,
health, the failover step, and the charon and kernel actions that carry it out.

The two modes share the failover state machine; only the actuator differs: policy
mode brings the new tunnel's CHILD_SA up before the old one goes (make-before-break),
route mode moves the route (both CHILD_SAs stay up).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from agent.core import planner, route_planner
from agent.core.desired import DesiredConnection
from agent.core.failover import FailoverPolicy, FailoverState, TunnelHealth, assess, step
from agent.core.health import InboundWatch, ProbeStats
from agent.core.model import TunnelApiStatus
from agent.core.modes import Mode
from agent.core.netstate import NetState
from agent.core.observation import CharonState, TunnelSas


@dataclass(frozen=True)
class ConnectionInputs:
    """The loop's memory of one connection, as of the previous pass."""

    failover: FailoverState | None  # None until the first pass adopts what exists
    timing: dict[str, planner.TunnelTiming]
    probes: dict[int, ProbeStats]
    inbound: InboundWatch | None
    drained: frozenset[int]
    policy: FailoverPolicy
    probe_failures: int
    connect_timeout: float  # s


@dataclass(frozen=True)
class ConnectionDecision:
    failover: FailoverState
    switch_reason: str | None  # set when traffic moves in this pass
    previous_active: int | None
    health: dict[int, TunnelHealth]
    timing: dict[str, planner.TunnelTiming]
    inbound: InboundWatch | None
    charon_actions: list[planner.Action]
    net_actions: list[route_planner.RouteAction]


def decide(conn: DesiredConnection, charon: CharonState, net: NetState, inputs: ConnectionInputs,
           now: float, wall_now: float) -> ConnectionDecision:
    """One pass for one connection. `now` monotonic, `wall_now` unix time. No side effects."""
    route = conn.mode is Mode.ROUTE
    sas = {t.number: charon.tunnel(t.conn_name) for t in conn.tunnels}
    timing = {t.conn_name: planner.observe_timing(inputs.timing.get(t.conn_name, planner.TunnelTiming()),
                                                  sas[t.number], now)
              for t in conn.tunnels}
    state = inputs.failover
    if state is None:
        preferred = inputs.policy.preferred
        adopted = route_planner.adopt_active_route(conn, net, preferred) if route else \
            planner.adopt_active(conn, charon, preferred)
        state = FailoverState(active=adopted)
    previous = state.active
    inbound = None if route else _watch_inbound(inputs.inbound, sas[previous], now)
    health = {
        t.number: assess(
            sas=sas[t.number], route_mode=route, is_active=t.number == previous,
            ever_usable=timing[t.conn_name].ever_installed if route else timing[t.conn_name].ever_established,
            unusable_since=timing[t.conn_name].uninstalled_since if route else timing[t.conn_name].unestablished_since,
            probes=current_probes(inputs.probes.get(t.number), sas[t.number]),
            probe_failures=inputs.probe_failures,
            inbound=inbound if t.number == previous else None,
            api_status=t.api_status, api_down_since=_api_down_since(conn, t.number),
            sa_established_at=_established_at(sas[t.number], wall_now),
            drained=t.number in inputs.drained, now=now,
        )
        for t in conn.tunnels
    }
    state, reason = step(state, health, inputs.policy, now)
    active = state.active
    for t in conn.tunnels:  # a new goal, or a goal reached, starts the backoff afresh
        switched_to = reason is not None and t.number == active
        if switched_to or planner.reached_desired_state(sas[t.number], route or t.number == active):
            timing[t.conn_name] = replace(timing[t.conn_name], attempts=0, next_attempt_at=0.0)

    actions = planner.plan_stuck(conn, charon, timing, now, inputs.connect_timeout)
    if route:
        actions += route_planner.plan_route_tunnels(conn, charon, timing, now)
        net_actions = route_planner.plan_routes(conn, charon, net, active)
    else:
        actions += planner.plan_policy_mode(conn, charon, active, timing, now)
        net_actions = []
    actions += planner.plan_replace_broken(conn, charon, active, health)
    return ConnectionDecision(state, reason, previous, health, timing, inbound, actions, net_actions)


def current_probes(stats: ProbeStats | None, sas: TunnelSas) -> ProbeStats | None:
    """Probe results count only for the IKE SA they crossed: a re-established tunnel
    starts with a clean slate."""
    ike = sas.established_ike
    if stats is None or ike is None or stats.sa_id != ike.uniqueid:
        return None
    return stats


def _watch_inbound(watch: InboundWatch | None, sas: TunnelSas, now: float) -> InboundWatch | None:
    child = sas.installed_child
    if child is None:
        return None
    return (watch or InboundWatch()).update(child.uniqueid, child.packets_in, child.packets_out, now)


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


def _established_at(sas: TunnelSas, wall_now: float) -> float | None:
    ike = sas.established_ike
    if ike is None or ike.established is None:
        return None
    return wall_now - ike.established
