"""The status of one connection, built from the loop's record and the last observation
of charon: the immutable view that the control socket and the metrics read. Health and
problems come from the same verdicts the failover decided on. Also the agent's Platform
API budget, from the poller's last pace. No side effects.
"""

from __future__ import annotations

from agent.core.api_budget import PollPace
from agent.core.decide import current_probes
from agent.core.failover import TunnelRole
from agent.core.ha import HaNotice
from agent.core.health import ProbeStats, TrafficTotals, probe_healthy
from agent.core.lifecycle import life_of
from agent.core.memory import ConnectionRecord
from agent.core.observation import CharonState
from agent.core.snapshot import ApiBudgetView, ConnectionView, FailoverView, HaView, TunnelView


def api_budget_view(pace: PollPace | None) -> ApiBudgetView | None:
    if pace is None:
        return None
    return ApiBudgetView(remaining=pace.remaining, poll_interval=pace.interval, base_interval=pace.base_interval,
                         stretched=pace.stretched, calls_per_round=pace.calls_per_round)


def ha_view(enabled: bool, connections: tuple[ConnectionView, ...], notice: HaNotice | None) -> HaView | None:
    if not enabled:
        return None
    states = {c.ha for c in connections}
    return HaView(state=states.pop() if len(states) == 1 else "mixed",
                  keepalived=notice.state.value if notice is not None else None)


def connection_view(record: ConnectionRecord, charon: CharonState, now: float, wall_now: float) -> ConnectionView:
    """`now` monotonic (a deleted connection's grace), `wall_now` unix (established_at)."""
    settings, far_end, memory = record.settings, record.far_end, record.memory
    tunnels: tuple[TunnelView, ...] = ()
    if memory.desired is not None:
        tunnels = tuple(_tunnel_view(record, t.number, charon, wall_now) for t in memory.desired.tunnels)
    health, summary = memory.verdict
    life = life_of(far_end, settings, now)
    return ConnectionView(
        space=settings.space,
        vpn=settings.vpn,
        mode=settings.mode.value,
        mode_reason=settings.mode_reason,
        source=far_end.source,
        connection_status=far_end.connection_status,
        health=health,
        summary=summary,
        api_error=far_end.api_error,
        api_last_success=far_end.api_last_success,
        api_errors=dict(far_end.api_errors),
        tunnels=tunnels,
        failovers=tuple(FailoverView(f.at, f.from_tunnel, f.to_tunnel, f.reason.detail, f.reason.kind.value)
                        for f in memory.failovers),
        failover_counts={kind.value: count for kind, count in memory.failover_counts.items()},
        status_message=far_end.status_message,
        stage=life.stage.value,
        heroku_note=life.note,
        generation=far_end.generation,
        ha=memory.ha[0].value if memory.ha is not None else "off",
        ha_reason=memory.ha[1] if memory.ha is not None else "",
        connection_errors={stage.value: count for stage, count in memory.faults.items()},
    )


def _tunnel_view(record: ConnectionRecord, number: int, charon: CharonState, wall_now: float) -> TunnelView:
    memory = record.memory
    assert memory.desired is not None
    desired = memory.desired.tunnel(number)
    sas = charon.tunnel(desired.conn_name)
    child = sas.installed_child
    ike = sas.established_ike
    vpn = record.far_end.vpn
    api_tunnel = vpn.tunnel(number) if vpn is not None else None
    health = memory.health.get(number)
    return TunnelView(
        number=number,
        ip=desired.remote_ip,
        api_status=desired.api_status.value,
        api_status_message=api_tunnel.status_message if api_tunnel else "",
        ike_state=sas.ike_state.value,
        child_state=sas.child_state.value,
        role=(TunnelRole.ACTIVE if memory.active == number else TunnelRole.STANDBY).value,
        established_seconds=ike.established if ike else None,
        established_at=wall_now - ike.established if ike and ike.established is not None else None,
        bytes_in=sum(c.bytes_in for c in sas.children),
        bytes_out=sum(c.bytes_out for c in sas.children),
        packets_in=sum(c.packets_in for c in sas.children),
        packets_out=sum(c.packets_out for c in sas.children),
        last_inbound_seconds=child.use_in if child else None,
        interface=desired.interface,
        drained=number in memory.drained,
        initiates=dict(memory.initiates.get(number, {})),
        generation=desired.generation,
        **_traffic_fields(memory.traffic.get(number)),
        problem=health.describe if health is not None else "",
        **_probe_fields(current_probes(memory.probes.get(number), sas), record.settings.probe.failures),
    )


def _traffic_fields(traffic: TrafficTotals | None) -> dict:
    if traffic is None:
        return {}
    names = ("bytes_in_total", "bytes_out_total", "packets_in_total", "packets_out_total")
    return dict(zip(names, traffic.totals))


def _probe_fields(stats: ProbeStats | None, failures: int) -> dict:
    if stats is None:
        return {}
    rtt = round(stats.last_rtt * 1000, 3) if stats.last_rtt is not None else None
    return {"probe_sent": stats.sent, "probe_lost": stats.lost, "probe_rtt_ms": rtt,
            "probe_consecutive_failures": stats.consecutive_failures,
            "probe_healthy": probe_healthy(stats, failures)}
