"""The one loop state, owned by the loop thread alone: a frozen record per connection
(replaced, never edited), what this process loaded into charon, and the last
observations. Also how a config becomes records, and how each inbox message turns a
record into the next one. Nothing here does I/O except the cache read at (re)config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from agent.adapters.vip_guard import VipProbed
from agent.config import AgentConfig, ConnectionConfig, static_vpn_connection
from agent.core.addresses import url_address
from agent.core.api_budget import PollPace
from agent.core.decide import current_probes
from agent.core.failover import FailoverPolicy
from agent.core.ha import HaNotice, VipProbe
from agent.core.health import ProbeResult, ProbeStats
from agent.core.lifecycle import Stage, far_end_after_answer, far_end_after_not_found, life_of
from agent.core.memory import ConnectionMemory, ConnectionRecord, ConnectionSettings, FarEnd, ProbeSettings
from agent.core.model import ConnectionStatus
from agent.core.modes import resolve_mode
from agent.core.netstate import NetState
from agent.core.observation import CharonState
from agent.core.tunnel_timing import TunnelTiming
from agent.daemon.messages import ApiAnswer, ApiFailure
from agent.daemon.ports import CachePort

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    config: AgentConfig
    records: dict[str, ConnectionRecord]  # by key, in config order
    loaded: dict[str, str] = field(default_factory=dict)  # charon conn name -> fingerprint we loaded
    charon: CharonState = field(default_factory=lambda: CharonState(reachable=False))
    charon_error: str | None = None  # why charon is unreachable, once announced
    net: NetState = field(default_factory=NetState)
    errors: tuple[str, ...] = ()  # agent-wide problems, e.g. a refused reload
    ready: bool = False  # the first pass completed
    api_pace: PollPace | None = None  # the API poller's last pace; None: no poller (yet)
    ha_notice: HaNotice | None = None  # keepalived's last notify (agentctl ha)
    vip_probes: dict[str, VipProbe] = field(default_factory=dict)  # split-brain guard, by virtual address


def settings_for(conn: ConnectionConfig, config: AgentConfig, route_unsupported: str | None) -> ConnectionSettings:
    """The one place a connection's config turns into what decisions read.
    Raises ModeUnavailable for `mode: route` where the kernel cannot."""
    mode, reason = resolve_mode(conn.mode, route_unsupported)
    return ConnectionSettings(
        key=conn.key, space=conn.space, vpn=conn.vpn, mode=mode, mode_reason=reason,
        local_address=conn.local_address, local_id=conn.local_id, source_address=conn.source_address,
        tunnel_mtu=conn.tunnel_mtu, tcp_mss=conn.tcp_mss, selectors=conn.traffic_selectors,
        probe=ProbeSettings(conn.probe.target, conn.probe.interval, conn.probe.failures, port=conn.probe.port,
                            resolve_interval=conn.probe.resolve_interval),
        policy=FailoverPolicy(preferred=conn.preferred_tunnel, hold_down=conn.failback_hold_down),
        connect_timeout=config.strongswan.connect_timeout,
        not_found_grace=config.api.not_found_grace, forget_deleted_after=config.api.forget_deleted_after,
        api_address=url_address(config.api.url),
        ha=config.ha.enabled,
    )


def records_for(config: AgentConfig, old: dict[str, ConnectionRecord], cache: CachePort,
                route_unsupported: str | None) -> dict[str, ConnectionRecord]:
    """Records for a (new) config. The same Heroku connection keeps what we know of the
    far end and what earlier passes learned; a static one takes its far end from the config."""
    records = {}
    for conn in config.connections:
        settings = settings_for(conn, config, route_unsupported)
        previous = old.get(conn.key)
        if conn.static is not None:
            far_end = FarEnd(vpn=static_vpn_connection(conn), source="static",
                             connection_status=ConnectionStatus.ACTIVE.value, generation=1)
            memory = ConnectionMemory()
        elif previous is not None and previous.far_end.source != "static":
            far_end = replace(previous.far_end, api_error=None, api_error_kind=None)
            memory = replace(previous.memory, local_address=None, desired=None)
        else:
            far_end, memory = FarEnd(), ConnectionMemory()
            cached = cache.load(conn.space, conn.vpn)
            if cached is not None:
                log.info("%s: using the cached VPN connection until the API answers", conn.label)
                far_end = FarEnd(vpn=cached, source="cache", connection_status=cached.status.value, generation=1)
        records[conn.key] = ConnectionRecord(settings, far_end, memory)
    return records


def with_api_answer(record: ConnectionRecord, answer: ApiAnswer, now: float, wall_now: float) -> ConnectionRecord:
    """A Platform API answer; a 304 only says that what we have is current."""
    label, before = record.settings.label, record.far_end
    if before.api_error:
        log.info("%s: Platform API reachable again", label)
    far_end = far_end_after_answer(before, answer.result.answer, now, wall_now, answer.result.heroku_clock)
    _log_life(label, before, far_end, record.settings, now)
    if far_end.generation != before.generation and before.generation:
        log.warning("%s: the far end's settings changed (generation %d): rolling the tunnels over, one at a time",
                    label, far_end.generation)
    return replace(record, far_end=far_end)


def with_api_failure(record: ConnectionRecord, failure: ApiFailure, now: float) -> ConnectionRecord:
    before = record.far_end
    if failure.message != before.api_error:
        log.error("%s: Platform API: %s (tunnels are left as they are)", record.settings.label, failure.message)
    counts = dict(before.api_errors)
    counts[failure.kind] = counts.get(failure.kind, 0) + 1
    far_end = replace(before, api_error=failure.message, api_error_kind=failure.kind, api_errors=counts)
    if failure.kind == "not_found":
        far_end = far_end_after_not_found(far_end, now)
        _log_life(record.settings.label, before, far_end, record.settings, now)
    return replace(record, far_end=far_end)


def _log_life(label: str, before: FarEnd, after: FarEnd, settings: ConnectionSettings, now: float) -> None:
    """Each change of stage once, loudly for the ones that need a person."""
    was, life = life_of(before, settings, now), life_of(after, settings, now)
    if (was.stage, before.connection_status, before.status_message) == (
            life.stage, after.connection_status, after.status_message):
        return
    if life.stage in (Stage.GONE, Stage.FAILED, Stage.NOT_FOUND):
        log.error("%s: %s", label, life.note)
    elif life.note:
        log.info("%s: %s", label, life.note)
    elif was.stage is not Stage.ACTIVE and life.stage is Stage.ACTIVE:
        log.info("%s: the VPN connection is active", label)


def with_api_pace(previous: PollPace | None, pace: PollPace) -> PollPace:
    """The poller's pace after a round; said in the log when a low budget starts or
    stops stretching it (not every round: the stretch follows the pool)."""
    was_stretched = previous is not None and previous.stretched
    if pace.stretched and not was_stretched:
        log.warning("Platform API budget low: %s calls left in the token's pool (shared with its owner's other "
                    "tools); polling every %.0f s instead of %.0f s until it refills",
                    pace.remaining, pace.interval, pace.base_interval)
    elif was_stretched and not pace.stretched:
        log.info("Platform API budget recovered (%s calls left); polling every %.0f s again",
                 pace.remaining if pace.remaining is not None else "unknown", pace.interval)
    return pace


def with_probe_result(record: ConnectionRecord, result: ProbeResult, charon: CharonState) -> ConnectionRecord:
    """A probe counts for the IKE SA it crossed; without an SA there is nothing to blame or
    credit. A lost probe sent before the tunnel had an installed CHILD_SA proves nothing
    either (route mode at start: IKEv1 has its IKE SA a Quick Mode before its child)."""
    memory = record.memory
    if memory.desired is None:
        return record
    conn_name = memory.desired.tunnel(result.tunnel).conn_name
    sas = charon.tunnel(conn_name)
    if sas.established_ike is None:
        return record
    installed_at = memory.timing.get(conn_name, TunnelTiming()).installed_at
    if not result.ok and (installed_at is None or result.sent_at < installed_at):
        return record
    previous = current_probes(memory.probes.get(result.tunnel), sas) or ProbeStats(sa_id=sas.established_ike.uniqueid)
    stats = previous.record(result.ok, result.rtt, result.sent_at)
    failures, label = record.settings.probe.failures, record.settings.label
    if stats.consecutive_failures == failures:
        log.warning("%s: tunnel %d lost %d probes in a row", label, result.tunnel, failures)
    elif result.ok and previous.consecutive_failures >= failures:
        log.info("%s: tunnel %d answers probes again", label, result.tunnel)
    return replace(record, memory=replace(memory, probes={**memory.probes, result.tunnel: stats}))


def quiet(state: LoopState, message: object) -> bool:
    """Whether a message may wait for the loop's next tick instead of a pass of its own,
    looked at before the state takes it in: it changes nothing a decision reads. An
    answered probe of a tunnel none of whose recent probes was lost (it only resets a
    count of losses that is 0 already), a 304 while the API had not failed (only the
    time of the last good answer moves), any message for a connection no longer
    configured, and the split-brain guard's look when nobody else answered, as at its
    last look, while no connection yields. With one probe result per tunnel every
    interval, a pass for each made the passes of N connections cost N x N; everything
    else still gets its pass at once."""
    match message:
        case ProbeResult(key=key, tunnel=tunnel, ok=ok):
            record = state.records.get(key)
            if record is None:
                return True
            stats = record.memory.probes.get(tunnel)
            return ok and (stats is None or stats.consecutive_failures == 0)
        case ApiAnswer(key=key, result=result):
            record = state.records.get(key)
            if record is None:
                return True
            far_end = record.far_end
            return result.answer is None and far_end.api_error is None and far_end.missing_since is None
        case VipProbed(address=address, probe=probe):
            previous = state.vip_probes.get(address)
            yielding = any(r.memory.split_brain is not None and r.memory.split_brain.yielding
                           for r in state.records.values())
            return previous is not None and not previous.others and not probe.others and not yielding
    return False


def with_drain(record: ConnectionRecord, command: str, tunnel: object) -> ConnectionRecord:
    """drain N / undrain N. Raises ValueError with a message for the operator."""
    if type(tunnel) is not int or tunnel not in (1, 2):
        raise ValueError(f"tunnel must be 1 or 2, got {tunnel!r}")
    drained = record.memory.drained
    if command == "drain":
        if 3 - tunnel in drained:
            raise ValueError(f"tunnel {3 - tunnel} is drained already: draining both would leave traffic "
                             f"nowhere to go; `agentctl undrain {3 - tunnel}` first")
        drained = drained | {tunnel}
    elif command == "undrain":
        drained = drained - {tunnel}
    else:
        raise ValueError(f"unknown command {command!r}")
    return replace(record, memory=replace(record.memory, drained=drained))


def charon_gone(state: LoopState) -> None:
    """charon restarted or went away: everything is loaded again, and the tunnels' timing
    starts over (its SAs went with it), start-up grace included."""
    state.loaded.clear()
    state.records = {key: replace(r, memory=replace(r.memory, timing={})) for key, r in state.records.items()}


def tunnels_start_over(state: LoopState, conn_names: frozenset[str]) -> None:
    """These tunnels' SAs were dropped on purpose (the far end changed): their timing
    starts over, start-up grace included."""
    if conn_names:
        state.records = {key: replace(r, memory=replace(r.memory, timing={
            name: timing for name, timing in r.memory.timing.items() if name not in conn_names}))
            for key, r in state.records.items()}
