"""What the loop knows of one connection, as frozen records it replaces (never edits):
the settings its config gives the decisions, what the far end (Platform API, cache or
static config) says, and what earlier passes and messages left behind.

The loop thread holds one ConnectionRecord per connection; a pass's plan returns the
next ConnectionMemory, inbox messages return the next FarEnd or memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from agent.core.desired import TCP_MSS, TUNNEL_MTU, DesiredConnection
from agent.core.failover import FailoverKind, FailoverPolicy, FailoverReason, FailoverState, TunnelHealth
from agent.core.faults import ConnectionFault, FaultStage, faulted_verdict
from agent.core.ha import HaState, VipWatch
from agent.core.health import InboundWatch, ProbeStats, TrafficTotals
from agent.core.model import VpnConnection
from agent.core.modes import Mode
from agent.core.rolling import TunnelSettings
from agent.core.selectors import TrafficSelectors
from agent.core.snapshot import Health
from agent.core.tunnel_timing import TunnelTiming

FAILOVERS_KEPT = 50  # recent failover events shown in status


@dataclass(frozen=True)
class ProbeSettings:
    target: str | None = None  # IPv4 address or host name; None: no data-path probe
    interval: float = 1.0  # s
    failures: int = 3  # consecutive losses that make a tunnel unhealthy
    port: int | None = None  # TCP connect to this port; None: ICMP echo
    resolve_interval: float = 60.0  # s between two lookups of a host name


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything a decision reads from one connection's config, in one place."""

    key: str
    space: str
    vpn: str
    mode: Mode  # resolved: ROUTE or POLICY
    mode_reason: str
    local_address: str | None = None  # None: detected towards tunnel 1
    local_id: str | None = None
    source_address: str | None = None  # None: our first address inside the routable CIDRs
    tunnel_mtu: int = TUNNEL_MTU
    tcp_mss: int = TCP_MSS
    selectors: TrafficSelectors = TrafficSelectors.CIDRS  # what the CHILD_SAs negotiate
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    policy: FailoverPolicy = field(default_factory=FailoverPolicy)
    connect_timeout: float = 5.0  # s a negotiation may take before it is dropped
    not_found_grace: float = 300.0  # s a 404 counts as "still being created"
    forget_deleted_after: float = 900.0  # s a deleted connection keeps its tunnels
    api_address: str | None = None  # the Platform API's IP when api.url names one: never tunnelled
    ha: bool = False  # one of a VRRP pair: runs its tunnels only while it holds local_address

    @property
    def label(self) -> str:
        return f"{self.space}/{self.vpn}"


@dataclass(frozen=True)
class FarEnd:
    """The far end as last described, and how the Platform API is doing."""

    vpn: VpnConnection | None = None  # last good description, tunnels numbered by IP (core/lifecycle)
    source: str = "none"  # api | cache | static | none
    connection_status: str = "unknown"
    status_message: str = ""  # Heroku's, e.g. "supplied CIDR block already in use"
    generation: int = 0  # of `vpn`'s settings: 1 for the first, +1 for each change
    # Monotonic s, so a stepped wall clock neither hastens nor delays a grace period.
    missing_since: float | None = None  # 404 for a connection never seen active
    gone_since: float | None = None  # deleted at Heroku (or 404 after it was active)
    api_error: str | None = None
    api_error_kind: str | None = None
    api_last_success: float | None = None  # unix s
    # Heroku's unix time minus our monotonic clock, from its last answer's Date header:
    # its timestamps (a DOWN's last_status_change) are compared with our SAs on its clock.
    heroku_clock: float | None = None
    api_errors: Mapping[str, int] = field(default_factory=dict)  # by kind, since start


@dataclass(frozen=True)
class FailoverRecord:
    at: float  # unix s
    from_tunnel: int
    to_tunnel: int
    reason: FailoverReason


@dataclass(frozen=True)
class ConnectionMemory:
    local_address: str | None = None  # configured, else detected once
    desired: DesiredConnection | None = None  # as of the last pass
    failover: FailoverState | None = None  # None until the first pass adopts what exists
    timing: Mapping[str, TunnelTiming] = field(default_factory=dict)  # by charon conn name
    probes: Mapping[int, ProbeStats] = field(default_factory=dict)  # by tunnel number
    inbound: InboundWatch | None = None
    drained: frozenset[int] = frozenset()
    health: Mapping[int, TunnelHealth] = field(default_factory=dict)  # by tunnel number
    verdict: tuple[Health, str] = (Health.DOWN, "VPN connection not known yet (Platform API)")
    traffic: Mapping[int, TrafficTotals] = field(default_factory=dict)  # by tunnel number
    initiates: Mapping[int, Mapping[str, int]] = field(default_factory=dict)  # tunnel -> result -> count
    failovers: tuple[FailoverRecord, ...] = ()  # most recent last, at most FAILOVERS_KEPT
    failover_counts: Mapping[FailoverKind, int] = field(default_factory=dict)  # since start
    running: Mapping[int, TunnelSettings] = field(default_factory=dict)  # far-end settings each tunnel runs
    faults: Mapping[FaultStage, int] = field(default_factory=dict)  # contained exceptions by stage, since start
    vip: VipWatch | None = None  # ha: whether this node holds local_address, since when
    ha: tuple[HaState, str] | None = None  # ha: this node's state for this connection, and why; None: no ha
    split_brain: SplitBrain | None = None  # ha: another node answers for local_address too

    @property
    def active(self) -> int | None:
        """The tunnel that carries traffic (None until the first pass decided)."""
        return self.failover.active if self.failover is not None else None

    def with_failover(self, record: FailoverRecord) -> "ConnectionMemory":
        counts = dict(self.failover_counts)
        counts[record.reason.kind] = counts.get(record.reason.kind, 0) + 1
        return replace(self, failovers=(self.failovers + (record,))[-FAILOVERS_KEPT:], failover_counts=counts)

    def with_fault(self, fault: ConnectionFault) -> "ConnectionMemory":
        """Counted, and said in the verdict."""
        counts = {**self.faults, fault.stage: self.faults.get(fault.stage, 0) + 1}
        return replace(self, faults=counts, verdict=faulted_verdict(self.verdict, fault))

    def with_initiate(self, tunnel: int, result: str) -> "ConnectionMemory":
        """`result`: accepted (charon took the request) or refused."""
        counts = dict(self.initiates.get(tunnel, {"accepted": 0, "refused": 0}))
        counts[result] = counts.get(result, 0) + 1
        return replace(self, initiates={**self.initiates, tunnel: counts})


@dataclass(frozen=True)
class ConnectionRecord:
    settings: ConnectionSettings
    far_end: FarEnd = field(default_factory=FarEnd)
    memory: ConnectionMemory = field(default_factory=ConnectionMemory)

    @property
    def key(self) -> str:
        return self.settings.key
