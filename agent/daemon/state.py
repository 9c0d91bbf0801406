"""The loop's own mutable state per connection, and how it turns into a Snapshot.

Only the loop thread touches ConnectionRuntime; `connection_view` is pure and builds
the immutable view other threads read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from agent.adapters.probe import ProbeTarget
from agent.config import ConnectionConfig
from agent.core.connection_plan import ConnectionDecision, ConnectionInputs, current_probes
from agent.core.desired import DesiredConnection
from agent.core.failover import FailoverPolicy, FailoverState, TunnelHealth
from agent.core.health import InboundWatch, ProbeStats, TrafficTotals, probe_healthy
from agent.core.model import VpnConnection
from agent.core.modes import Mode
from agent.core.observation import CharonState
from agent.core.planner import TunnelTiming
from agent.core.snapshot import ConnectionView, FailoverView, Health, TunnelView, connection_health

FAILOVERS_KEPT = 50  # recent failover events shown in status


@dataclass
class ConnectionRuntime:
    config: ConnectionConfig
    mode: Mode  # resolved: POLICY or ROUTE
    mode_reason: str
    vpn: VpnConnection | None = None  # last good description of the far end
    source: str = "none"  # api | cache | static | none
    connection_status: str = "unknown"
    api_error: str | None = None
    api_error_kind: str | None = None
    api_last_success: float | None = None
    local_address: str | None = None  # config value, else detected
    desired: DesiredConnection | None = None
    timing: dict[str, TunnelTiming] = field(default_factory=dict)
    probes: dict[int, ProbeStats] = field(default_factory=dict)  # by tunnel number
    failover: FailoverState | None = None
    inbound: InboundWatch | None = None
    drained: set[int] = field(default_factory=set)
    health: dict[int, TunnelHealth] = field(default_factory=dict)
    failovers: deque[FailoverView] = field(default_factory=lambda: deque(maxlen=FAILOVERS_KEPT))
    failover_counts: dict[str, int] = field(default_factory=dict)  # by reason, since start
    traffic: dict[int, TrafficTotals] = field(default_factory=dict)  # by tunnel number
    initiates: dict[int, dict[str, int]] = field(default_factory=dict)  # tunnel -> result -> count
    api_errors: dict[str, int] = field(default_factory=dict)  # by kind, since start

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def active(self) -> int | None:
        """The tunnel that carries traffic (None until the first pass decided)."""
        return self.failover.active if self.failover is not None else None

    def inputs(self, connect_timeout: float) -> ConnectionInputs:
        policy = FailoverPolicy(preferred=self.config.preferred_tunnel, hold_down=self.config.failback_hold_down)
        return ConnectionInputs(
            failover=self.failover, timing=dict(self.timing), probes=dict(self.probes), inbound=self.inbound,
            drained=frozenset(self.drained), policy=policy, probe_failures=self.config.probe.failures,
            connect_timeout=connect_timeout,
        )

    def count_initiate(self, conn_name: str, result: str) -> None:
        """`result`: accepted (charon took the request) or refused."""
        if self.desired is None:
            return
        number = next(t.number for t in self.desired.tunnels if t.conn_name == conn_name)
        counts = self.initiates.setdefault(number, {"accepted": 0, "refused": 0})
        counts[result] = counts.get(result, 0) + 1

    def apply_decision(self, decision: ConnectionDecision, wall_now: float) -> None:
        self.failover = decision.failover
        self.timing = dict(decision.timing)
        self.inbound = decision.inbound
        self.health = dict(decision.health)
        if decision.switch_reason and decision.previous_active is not None:
            self.failovers.append(FailoverView(wall_now, decision.previous_active, decision.failover.active,
                                               decision.switch_reason))
            kind = failover_kind(decision.switch_reason)
            self.failover_counts[kind] = self.failover_counts.get(kind, 0) + 1


def failover_kind(reason: str) -> str:
    """A stable label for a failover reason (metrics count by it)."""
    for word, kind in (("drained", "drain"), ("maintenance", "announced"), ("failback", "failback"),
                       ("probes", "probe"), ("inbound", "silence")):
        if word in reason:
            return kind
    return "down"


def probe_targets(runtimes: list[ConnectionRuntime]) -> list[ProbeTarget]:
    """Route mode: probe each tunnel through its own interface, so the standby path is
    verified continuously; policy mode: the active tunnel. Needs a probe target and a
    source inside the routable CIDRs."""
    targets = []
    for runtime in runtimes:
        conn, probe = runtime.desired, runtime.config.probe
        if conn is None or probe.target is None or conn.source_address is None:
            continue
        for tunnel in conn.tunnels:
            # Policy mode: only the active tunnel has a CHILD_SA, reached by the policy.
            if tunnel.interface is not None or tunnel.number == runtime.active:
                targets.append(ProbeTarget(
                    key=runtime.key, tunnel=tunnel.number, target=probe.target, source=conn.source_address,
                    interface=tunnel.interface, interval=probe.interval, timeout=min(probe.interval, 1.0),
                ))
    return targets


def connection_view(runtime: ConnectionRuntime, charon: CharonState, wall_now: float) -> ConnectionView:
    """Status of one connection from the loop's state and the last observation."""
    tunnels: tuple[TunnelView, ...] = ()
    if runtime.desired is not None:
        tunnels = tuple(_tunnel_view(runtime, t.number, charon, wall_now) for t in runtime.desired.tunnels)
    health, summary = connection_health(tunnels, charon.reachable, runtime.mode.value)
    if runtime.desired is None and runtime.api_error:
        summary = f"waiting for the Platform API: {runtime.api_error}"
    elif runtime.desired is None and runtime.connection_status not in ("unknown", "active"):
        summary = f"VPN connection is {runtime.connection_status}; waiting until it is active"
    return ConnectionView(
        space=runtime.config.space,
        vpn=runtime.config.vpn,
        mode=runtime.mode.value,
        mode_reason=runtime.mode_reason,
        source=runtime.source,
        connection_status=runtime.connection_status,
        health=health if runtime.desired is not None else Health.DOWN,
        summary=summary,
        api_error=runtime.api_error,
        api_last_success=runtime.api_last_success,
        api_errors=dict(runtime.api_errors),
        tunnels=tunnels,
        failovers=tuple(runtime.failovers),
        failover_counts=dict(runtime.failover_counts),
    )


def _tunnel_view(runtime: ConnectionRuntime, number: int, charon: CharonState, wall_now: float) -> TunnelView:
    assert runtime.desired is not None
    desired = runtime.desired.tunnel(number)
    sas = charon.tunnel(desired.conn_name)
    child = sas.installed_child
    ike = sas.established_ike
    api_tunnel = runtime.vpn.tunnel(number) if runtime.vpn is not None else None
    return TunnelView(
        number=number,
        ip=desired.remote_ip,
        api_status=desired.api_status.value,
        api_status_message=api_tunnel.status_message if api_tunnel else "",
        ike_state=sas.ike_state,
        child_state=sas.child_state,
        role="active" if runtime.active == number else "standby",
        established_seconds=ike.established if ike else None,
        established_at=wall_now - ike.established if ike and ike.established is not None else None,
        bytes_in=sum(c.bytes_in for c in sas.children),
        bytes_out=sum(c.bytes_out for c in sas.children),
        packets_in=sum(c.packets_in for c in sas.children),
        packets_out=sum(c.packets_out for c in sas.children),
        last_inbound_seconds=child.use_in if child else None,
        interface=desired.interface,
        drained=number in runtime.drained,
        initiates=dict(runtime.initiates.get(number, {})),
        **_traffic_fields(runtime.traffic.get(number)),
        problem=runtime.health[number].problem if number in runtime.health else "",
        **_probe_fields(current_probes(runtime.probes.get(number), sas), runtime.config.probe.failures),
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
