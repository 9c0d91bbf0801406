"""One reconcile pass as one pure function: from the loop's records and one observation
of charon and the kernel to one ordered plan. Level-triggered: nothing here depends on
what happened in between, only on the whole state now. No side effects.

Order: setup first (XFRM interfaces, charon objects), then each connection's step, then
what the loop arms and starts for the time until the next pass (fast reroutes, probes).
A plan with setup asks for a fresh observation before the connections are decided:
tunnels are planned on what charon and the kernel hold after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from agent.core.bounds import swallowed_addresses
from agent.core.charon_objects import CharonAction, TerminateIke, plan_objects
from agent.core.decide import ConnectionStep, decide
from agent.core.desired import DesiredConnection, desired_connection
from agent.core.health import ProbeTarget
from agent.core.lifecycle import Life, Stage, life_of
from agent.core.memory import ConnectionMemory, ConnectionRecord
from agent.core.modes import Mode
from agent.core.netstate import NetState, source_inside
from agent.core.observation import CharonState
from agent.core.rolling import RollPlan, plan_roll, published
from agent.core.route_mode import Reroute, RouteAction, mss_rules, plan_interfaces, plan_reroute, plan_stale_interfaces
from agent.core.snapshot import Health

PROBE_TIMEOUT_CAP = 1.0  # s: a probe unanswered this long is lost, whatever the interval
# While an IKE request is in flight the loop looks again this soon: an answered one is
# gone by then, so an exchange seen in flight at every look is one the peer left
# unanswered (charon lists no message ids to tell one DPD from the next).
LIVENESS_SAMPLE = 0.25  # s


@dataclass(frozen=True)
class PassInputs:
    records: tuple[ConnectionRecord, ...]
    charon: CharonState
    net: NetState
    loaded: Mapping[str, str]  # charon conn name -> fingerprint this process loaded
    detected: Mapping[str, str | None]  # local address found towards tunnel 1, by key
    now: float  # monotonic s
    wall_now: float  # unix s
    jitter: Mapping[str, float]  # by charon conn name, in [0, 1): spreads each tunnel's retries


@dataclass(frozen=True)
class PassPlan:
    setup: tuple[RouteAction | CharonAction, ...]
    steps: tuple[ConnectionStep, ...]  # one per record, in config order
    mss_rules: Mapping[str, int] | None  # interface -> MSS; None: no route mode, leave nft alone
    reroutes: tuple[Reroute, ...]
    probe_targets: tuple[ProbeTarget, ...]
    next_pass_in: float | None = None  # s; None: the loop's own tick

    @property
    def starting_over(self) -> frozenset[str]:
        """Tunnels (charon conn names) whose SAs the setup terminates because the far end
        changed: they come up afresh, like at a cold start (start-up grace included), so
        the one that happens to come back first does not take the traffic."""
        return frozenset(a.conn_name for a in self.setup if isinstance(a, TerminateIke))

    @property
    def needs_fresh_observation(self) -> bool:
        """Setup changes what charon and the kernel hold: apply it, observe again and
        plan again before any tunnel is decided."""
        return bool(self.setup)


@dataclass(frozen=True)
class _Prepared:
    """One connection before its decision: its stage at Heroku, the settings roll, and
    the charon setup wanted (None: far end or local address unknown, forgotten, or
    refused because its CIDRs would swallow our own address or the API's)."""

    life: Life
    roll: RollPlan | None
    desired: DesiredConnection | None
    refused: str | None = None  # why the far end's settings are not loaded, though known


def plan_pass(inputs: PassInputs) -> PassPlan:
    """The whole pass. No side effects."""
    charon, net = inputs.charon, inputs.net
    prepared = {r.key: _prepare(r, inputs) for r in inputs.records}
    desired = {key: p.desired for key, p in prepared.items()}
    if not charon.reachable:
        steps = tuple(_waiting(r, inputs, desired[r.key], _why_unknown(r, prepared[r.key].life, "charon unreachable")
                               if desired[r.key] is None else "charon unreachable") for r in inputs.records)
        return PassPlan((), steps, None, (), _probe_targets(steps, inputs.records))
    wanted = [conn for conn in desired.values() if conn is not None]
    routed = [conn for conn in wanted if conn.mode is Mode.ROUTE]
    # A connection Heroku deleted long enough ago is unloaded like one no longer configured.
    kept = [r for r in inputs.records if prepared[r.key].life.stage is not Stage.FORGOTTEN]
    setup: list[RouteAction | CharonAction] = []
    if any(r.settings.mode is Mode.ROUTE for r in inputs.records):
        setup += plan_stale_interfaces([(r.key, r.settings.vpn) for r in kept], net)
        for conn in routed:
            setup += plan_interfaces(conn, net)
    setup += plan_objects(wanted, {r.key for r in kept}, inputs.loaded, charon)
    steps = tuple(_step(r, prepared[r.key], inputs) for r in inputs.records)
    rules = mss_rules(routed) if any(r.settings.mode is Mode.ROUTE for r in inputs.records) else None
    reroutes = tuple(plan for plan in (plan_reroute(s.memory.desired, charon, s.memory.active)
                                       for s in steps if s.memory.desired is not None) if plan is not None)
    return PassPlan(tuple(setup), steps, rules, reroutes, _probe_targets(steps, inputs.records),
                    LIVENESS_SAMPLE if _request_in_flight(steps) else None)


def _request_in_flight(steps: tuple[ConnectionStep, ...]) -> bool:
    return any(t.exchange_pending_since is not None for s in steps for t in s.memory.timing.values())


def _step(record: ConnectionRecord, prepared: _Prepared, inputs: PassInputs) -> ConnectionStep:
    conn, roll, life = prepared.desired, prepared.roll, prepared.life
    if prepared.refused is not None:
        return _waiting(record, inputs, None, prepared.refused)
    if conn is None or roll is None:
        return _waiting(record, inputs, None, _why_unknown(record, life, "VPN connection not known yet (Platform API)"))
    memory = replace(record.memory, local_address=_local_address(record, inputs), running=roll.settings)
    step = decide(record.settings, memory, conn, inputs.charon, inputs.net, inputs.now, inputs.wall_now,
                  inputs.jitter, retiring=roll.retiring)
    if life.stage is Stage.FAILED:
        # The operator must act at Heroku, whatever the tunnels still do.
        health, summary = step.memory.verdict
        memory = replace(step.memory, verdict=(Health.DOWN, f"{life.note} (tunnels: {health.value}, {summary})"))
        step = replace(step, memory=memory)
    return step


def _local_address(record: ConnectionRecord, inputs: PassInputs) -> str | None:
    return record.settings.local_address or record.memory.local_address or inputs.detected.get(record.key)


def _prepare(record: ConnectionRecord, inputs: PassInputs) -> _Prepared:
    far_end, settings, memory = record.far_end, record.settings, record.memory
    life = life_of(far_end, settings, inputs.wall_now)
    vpn, local_address = far_end.vpn, _local_address(record, inputs)
    if vpn is None or local_address is None or life.stage is Stage.FORGOTTEN:
        return _Prepared(life, None, None)
    swallowed = swallowed_addresses(vpn.space_cidr_block, vpn.routable_cidrs, local_address=local_address,
                                    api_address=settings.api_address)
    if swallowed:
        # Nothing new is loaded; what runs stays as it is (like an unreachable API).
        return _Prepared(life, None, None, refused="refused the far end's settings: " + "; ".join(swallowed)
                         + " (tunnels left as they are)")
    roll = plan_roll(published(vpn, far_end.generation), memory.running, memory.active, memory.health,
                     route_mode=settings.mode is Mode.ROUTE)
    source = settings.source_address or source_inside(tuple(vpn.routable_cidrs), inputs.net.addresses)
    conn = desired_connection(
        key=record.key, space=settings.space, vpn=settings.vpn, local_address=local_address,
        local_id=settings.local_id, mode=settings.mode, connection=vpn, source_address=source,
        tunnel_mtu=settings.tunnel_mtu, tcp_mss=settings.tcp_mss, settings=roll.settings,
    )
    return _Prepared(life, roll, conn)


def _why_unknown(record: ConnectionRecord, life: Life, otherwise: str) -> str:
    far_end = record.far_end
    if life.stage in (Stage.WAITING, Stage.FAILED, Stage.NOT_FOUND, Stage.GONE, Stage.FORGOTTEN):
        return life.note
    if far_end.api_error:
        return f"waiting for the Platform API: {far_end.api_error}"
    if far_end.vpn is not None:
        return f"no route to tunnel 1 ({far_end.vpn.tunnel(1).ip}); set local_address"
    return otherwise


def _waiting(record: ConnectionRecord, inputs: PassInputs, conn: DesiredConnection | None, why: str) -> ConnectionStep:
    """A connection nothing is decided for in this pass: its memory stays, its verdict says why."""
    memory: ConnectionMemory = replace(record.memory, desired=conn, local_address=_local_address(record, inputs),
                                       verdict=(Health.DOWN, why))
    return ConnectionStep(record.key, record.settings.label, memory, None, (), ())


def _probe_targets(steps: tuple[ConnectionStep, ...], records: tuple[ConnectionRecord, ...]) -> tuple[ProbeTarget, ...]:
    """Route mode: probe each tunnel through its own interface, so the standby path is
    verified continuously; policy mode: the active tunnel (the only one with a CHILD_SA,
    reached by the policy). Needs a probe target and a source inside the routable CIDRs."""
    targets = []
    for record, step in zip(records, steps):
        conn, probe = step.memory.desired, record.settings.probe
        if conn is None or probe.target is None or conn.source_address is None:
            continue
        for tunnel in conn.tunnels:
            if tunnel.interface is not None or tunnel.number == step.memory.active:
                targets.append(ProbeTarget(
                    key=record.key, tunnel=tunnel.number, target=probe.target, source=conn.source_address,
                    interface=tunnel.interface, interval=probe.interval,
                    timeout=min(probe.interval, PROBE_TIMEOUT_CAP), port=probe.port,
                    resolve_interval=probe.resolve_interval,
                ))
    return tuple(targets)
