"""One reconcile pass as one pure function: from the loop's records and one observation
of charon and the kernel to one ordered plan. Level-triggered: nothing here depends on
what happened in between, only on the whole state now. No side effects.

Order: setup first (XFRM interfaces, charon objects), then each connection's step, then
what the loop arms and starts for the time until the next pass (fast reroutes, probes).
One connection whose planning raises is contained (core/faults): the others are planned.
A plan with setup asks for a fresh observation before the connections are decided:
tunnels are planned on what charon and the kernel hold after it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from agent.core.bounds import swallowed_addresses
from agent.core.charon_objects import CharonAction, TerminateIke, plan_loads, plan_unloads, terminate_all
from agent.core.decide import ConnectionStep, decide
from agent.core.desired import DesiredConnection, desired_connection
from agent.core.faults import ConnectionFault, FaultStage
from agent.core.ha import HaNotice, HaState, VipProbe, ha_state, observe_vip, split_brain
from agent.core.health import ProbeTarget
from agent.core.lifecycle import Life, Stage, heroku_now, life_of
from agent.core.memory import ConnectionMemory, ConnectionRecord
from agent.core.modes import Mode
from agent.core.netstate import NetState, source_inside
from agent.core.observation import CharonState
from agent.core.pace import TICK, next_look
from agent.core.rolling import RollPlan, plan_roll, published
from agent.core.route_mode import (
    DeleteRoute,
    Reroute,
    RouteAction,
    mss_rules,
    plan_interfaces,
    plan_reroute,
    plan_stale_interfaces,
)
from agent.core.selectors import selector_problem
from agent.core.snapshot import Health

PROBE_TIMEOUT_CAP = 1.0  # s: a probe unanswered this long is lost, whatever the interval
_T = TypeVar("_T")


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
    ha_notice: HaNotice | None = None  # keepalived's last notify (ha.enabled)
    vip_probes: Mapping[str, VipProbe] = field(default_factory=dict)  # by address: who else answers for it


@dataclass(frozen=True)
class PassPlan:
    setup: tuple[RouteAction | CharonAction, ...]
    steps: tuple[ConnectionStep, ...]  # one per record, in config order
    mss_rules: Mapping[str, int] | None  # interface -> MSS; None: no route mode, leave nft alone
    reroutes: tuple[Reroute, ...]
    probe_targets: tuple[ProbeTarget, ...]
    next_pass_in: float = TICK  # s until the loop looks again (core/pace)
    faults: tuple[ConnectionFault, ...] = ()  # connections whose planning raised (their steps say so)

    @property
    def yielding(self) -> bool:
        """An HA node that yields its virtual address to another holder (split brain)."""
        return any(s.memory.split_brain is not None and s.memory.split_brain.yielding for s in self.steps)

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
    refusal: str | None = None  # why the far end's latest settings are not loaded (core/selectors)
    refused: str | None = None  # why the far end's settings are not loaded at all, though known (core/bounds)


def plan_pass(inputs: PassInputs) -> PassPlan:
    """The whole pass. No side effects. Each connection's share is planned contained: one
    that raises (bad data, or a bug it hits) gets a faulted step, keeps what it runs (its
    charon objects, interfaces, MSS rules) and the others are planned as usual."""
    charon, net, records = inputs.charon, inputs.net, inputs.records
    contain = _Contained()
    prepared = {r.key: contain(r.key, lambda r=r: _prepare(r, inputs), None) for r in records}
    if not charon.reachable:
        steps = {r.key: contain(r.key, lambda r=r: _unreachable(r, prepared[r.key], inputs), None) for r in records}
        targets = {r.key: contain(r.key, lambda r=r: _probe_targets(r, steps[r.key]), ()) for r in records}
        return _plan(inputs, (), steps, None, {}, targets, contain.faults)
    route = any(r.settings.mode is Mode.ROUTE for r in records)
    # A connection Heroku deleted long enough ago is unloaded like one no longer configured.
    kept = [r for r in records if prepared[r.key] is None or prepared[r.key].life.stage is not Stage.FORGOTTEN]
    own_setup = {r.key: contain(r.key, lambda r=r: _own_setup(prepared[r.key], inputs), []) for r in records}
    steps = {r.key: contain(r.key, lambda r=r: _step(r, prepared[r.key], inputs), None) for r in records}
    reroutes = {r.key: contain(r.key, lambda r=r: _reroute(steps[r.key], charon), None) for r in records}
    targets = {r.key: contain(r.key, lambda r=r: _probe_targets(r, steps[r.key]), ()) for r in records}
    faults = contain.faults
    setup: list[RouteAction | CharonAction] = []
    if route:
        setup += plan_stale_interfaces([(r.key, r.settings.vpn) for r in kept], net)
    setup += [action for r in records if r.key not in faults for action in own_setup[r.key]]
    setup += plan_unloads({r.key for r in kept}, charon)
    rules = _mss_rules(records, prepared, faults) if route else None
    return _plan(inputs, tuple(setup), steps, rules, reroutes, targets, faults)


class _Contained:
    """Computes one connection's share of the plan; an exception becomes that connection's
    fault and every later share of it the default."""

    def __init__(self) -> None:
        self.faults: dict[str, ConnectionFault] = {}

    def __call__(self, key: str, compute: Callable[[], _T], default: _T) -> _T:
        if key in self.faults:
            return default
        try:
            return compute()
        except Exception as e:  # one connection must not stop the plan for the others
            self.faults[key] = ConnectionFault(key, FaultStage.PLAN, e)
            return default


def _plan(inputs: PassInputs, setup: tuple[RouteAction | CharonAction, ...],
          steps: Mapping[str, ConnectionStep | None], rules: Mapping[str, int] | None,
          reroutes: Mapping[str, Reroute | None], targets: Mapping[str, tuple[ProbeTarget, ...]],
          faults: Mapping[str, ConnectionFault]) -> PassPlan:
    """The plan, faulted connections doing nothing: no actions, no reroute, no probes."""
    records = inputs.records
    final = tuple(_faulted(r, faults[r.key]) if r.key in faults else steps[r.key] for r in records)
    assert all(step is not None for step in final)
    ok = [r.key for r in records if r.key not in faults]
    armed = tuple(plan for plan in (reroutes.get(key) for key in ok) if plan is not None)
    probes = tuple(target for key in ok for target in targets[key])
    try:
        pace = next_look({r.key: r for r in records}, final, inputs.charon, inputs.now, calm=not setup and not faults)
    except Exception:  # a connection's data it trips on: look again at the usual tick
        pace = TICK
    return PassPlan(setup, final, rules, armed, probes, pace, tuple(faults.values()))


def _faulted(record: ConnectionRecord, fault: ConnectionFault) -> ConnectionStep:
    """Nothing decided: what it runs stays as it is (the last desired state too, for status)."""
    return ConnectionStep(record.key, record.settings.label, record.memory.with_fault(fault), None, (), ())


def _unreachable(record: ConnectionRecord, prepared: _Prepared, inputs: PassInputs) -> ConnectionStep:
    conn = prepared.desired
    unreachable = f"charon unreachable ({inputs.charon.error})" if inputs.charon.error else "charon unreachable"
    why = _why_unknown(record, prepared.life, unreachable) if conn is None else unreachable
    return _waiting(record, inputs, conn, why)


def _own_setup(prepared: _Prepared, inputs: PassInputs) -> list[RouteAction | CharonAction]:
    """One connection's interfaces (route mode) and charon objects to load."""
    conn = prepared.desired
    if conn is None:
        return []
    actions: list[RouteAction | CharonAction] = []
    if conn.mode is Mode.ROUTE:
        actions += plan_interfaces(conn, inputs.net)
    return actions + plan_loads(conn, inputs.loaded, inputs.charon)


def _reroute(step: ConnectionStep | None, charon: CharonState) -> Reroute | None:
    if step is None or step.memory.desired is None:
        return None
    return plan_reroute(step.memory.desired, charon, step.memory.active)


def _mss_rules(records: tuple[ConnectionRecord, ...], prepared: Mapping[str, _Prepared | None],
               faults: Mapping[str, ConnectionFault]) -> dict[str, int] | None:
    """MSS clamping of every route-mode interface; a faulted connection keeps the rules of
    its last good pass. None (nft left alone) when even those cannot be computed."""
    rules: dict[str, int] = {}
    for record in records:
        found = prepared.get(record.key)
        conn = record.memory.desired if record.key in faults or found is None else found.desired
        if conn is None or conn.mode is not Mode.ROUTE:
            continue
        try:
            rules |= mss_rules([conn])
        except Exception:  # only a faulted connection's old state can get here: keep nft as it is
            return None
    return rules


def _step(record: ConnectionRecord, prepared: _Prepared, inputs: PassInputs) -> ConnectionStep:
    if not record.settings.ha:
        return _connection_step(record, prepared, inputs)
    # One of a VRRP pair: the holder of local_address runs the tunnels, the other stands by.
    vip = record.settings.local_address or ""
    holds = vip in inputs.net.addresses
    watch = observe_vip(record.memory.vip, holds, inputs.now)
    conflict = split_brain(record.memory.split_brain, inputs.vip_probes.get(vip), holds, inputs.now)
    if conflict is not None and conflict.yielding:
        ha = (HaState.FAULT, conflict.describe(vip))
    else:
        ha = ha_state(vip, watch, inputs.ha_notice)
    if ha[0] is HaState.MASTER or prepared.desired is None or prepared.roll is None:
        step = _connection_step(record, prepared, inputs)
    else:
        step = _standby(record, prepared.desired, prepared.roll, inputs, ha)
    return replace(step, memory=replace(step.memory, vip=watch, ha=ha, split_brain=conflict))


def _standby(record: ConnectionRecord, conn: DesiredConnection, roll: RollPlan, inputs: PassInputs,
             ha: tuple[HaState, str]) -> ConnectionStep:
    """An HA backup (or a node keepalived put in fault): the tunnels stay loaded, nothing
    is initiated, our SAs go and so do our routes. Its memory starts over, so becoming
    master initiates both tunnels at once, like a cold start."""
    state, why = ha
    actions = [a for t in conn.tunnels for a in terminate_all(t.conn_name, inputs.charon.tunnel(t.conn_name))]
    ours = {t.interface for t in conn.tunnels if t.interface is not None}
    routes = [DeleteRoute(r.dst, r.ifname, r.metric) for r in inputs.net.routes if r.ifname in ours]
    loaded = all(t.conn_name in inputs.charon.conns for t in conn.tunnels)
    if state is HaState.FAULT:
        verdict = (Health.DEGRADED, f"standby (HA fault): {why}; this node cannot take over")
    elif not loaded:
        verdict = (Health.DEGRADED, f"standby (HA backup): {why}; its tunnels are not loaded into charon yet")
    else:
        verdict = (Health.OK, f"standby (HA backup): {why}; tunnels loaded, nothing initiated")
    memory = replace(record.memory, desired=conn, local_address=_local_address(record, inputs), running=roll.settings,
                     failover=None, timing={}, inbound=None, health={}, probes={}, verdict=verdict)
    return ConnectionStep(record.key, record.settings.label, memory, None, tuple(actions), tuple(routes))


def _connection_step(record: ConnectionRecord, prepared: _Prepared, inputs: PassInputs) -> ConnectionStep:
    conn, roll, life = prepared.desired, prepared.roll, prepared.life
    if prepared.refused is not None:
        return _waiting(record, inputs, None, prepared.refused)
    if conn is None or roll is None:
        why = prepared.refusal or _why_unknown(record, life, "VPN connection not known yet (Platform API)")
        return _waiting(record, inputs, None, why)
    memory = replace(record.memory, local_address=_local_address(record, inputs), running=roll.settings)
    step = decide(record.settings, memory, conn, inputs.charon, inputs.net, inputs.now, inputs.wall_now,
                  inputs.jitter, retiring=roll.retiring,
                  heroku_now=heroku_now(record.far_end, inputs.now, inputs.wall_now))
    health, summary = step.memory.verdict
    if life.stage is Stage.FAILED:
        # The operator must act at Heroku, whatever the tunnels still do.
        step = replace(step, memory=replace(step.memory, verdict=(
            Health.DOWN, f"{life.note} (tunnels: {health.value}, {summary})")))
    elif prepared.refusal is not None:
        # The tunnels keep the last settings that could be loaded; the new ones need a person.
        step = replace(step, memory=replace(step.memory, verdict=(
            max(health, Health.DEGRADED), f"the far end's new settings are not loaded: {prepared.refusal} "
                                          f"(tunnels keep the previous ones: {summary})")))
    return step


def _local_address(record: ConnectionRecord, inputs: PassInputs) -> str | None:
    return record.settings.local_address or record.memory.local_address or inputs.detected.get(record.key)


def _prepare(record: ConnectionRecord, inputs: PassInputs) -> _Prepared:
    far_end, settings, memory = record.far_end, record.settings, record.memory
    life = life_of(far_end, settings, inputs.now)
    vpn, local_address = far_end.vpn, _local_address(record, inputs)
    if vpn is None or local_address is None or life.stage is Stage.FORGOTTEN:
        return _Prepared(life, None, None)
    swallowed = swallowed_addresses(vpn.space_cidr_block, vpn.routable_cidrs, local_address=local_address,
                                    api_address=settings.api_address)
    if swallowed:
        # Nothing new is loaded; what runs stays as it is (like an unreachable API).
        return _Prepared(life, None, None, refused="refused the far end's settings: " + "; ".join(swallowed)
                         + " (tunnels left as they are)")
    target = published(vpn, far_end.generation)
    refusal = connection_selector_problem(record)
    if refusal is not None:
        # Never loaded with only its first selector. What runs from an earlier answer
        # stays, and stays managed (failover, re-initiation); else nothing is loaded.
        runnable = memory.running and not any(
            selector_problem(s.ike_version, settings.mode, s.routable_cidrs, settings.selectors)
            for s in memory.running.values())
        if not runnable:
            return _Prepared(life, None, None, refusal)
        target = dict(memory.running)
    roll = plan_roll(target, memory.running, memory.active, memory.health, route_mode=settings.mode is Mode.ROUTE)
    source = settings.source_address or source_inside(tuple(vpn.routable_cidrs), inputs.net.addresses)
    conn = desired_connection(
        key=record.key, space=settings.space, vpn=settings.vpn, local_address=local_address,
        local_id=settings.local_id, mode=settings.mode, connection=vpn, source_address=source,
        tunnel_mtu=settings.tunnel_mtu, tcp_mss=settings.tcp_mss, settings=roll.settings,
        selectors=settings.selectors,
    )
    return _Prepared(life, roll, conn, refusal)


def connection_selector_problem(record: ConnectionRecord) -> str | None:
    """Why the far end's answer cannot be loaded as it is (IKEv1 with several routable
    CIDRs): such a connection is never loaded with only its first selector."""
    vpn, settings = record.far_end.vpn, record.settings
    if vpn is None:
        return None
    return selector_problem(vpn.ike_version, settings.mode, vpn.routable_cidrs, settings.selectors)


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


def _probe_targets(record: ConnectionRecord, step: ConnectionStep | None) -> tuple[ProbeTarget, ...]:
    """Route mode: probe each tunnel through its own interface, so the standby path is
    verified continuously; policy mode: the active tunnel (the only one with a CHILD_SA,
    reached by the policy). Needs a probe target and a source inside the routable CIDRs."""
    if step is None or (step.memory.ha is not None and step.memory.ha[0] is not HaState.MASTER):
        return ()
    conn, probe = step.memory.desired, record.settings.probe
    if conn is None or probe.target is None or conn.source_address is None:
        return ()
    return tuple(
        ProbeTarget(key=record.key, tunnel=tunnel.number, target=probe.target, source=conn.source_address,
                    interface=tunnel.interface, interval=probe.interval,
                    timeout=min(probe.interval, PROBE_TIMEOUT_CAP), port=probe.port,
                    resolve_interval=probe.resolve_interval)
        for tunnel in conn.tunnels if tunnel.interface is not None or tunnel.number == step.memory.active
    )
