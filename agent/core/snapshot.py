"""The immutable picture the loop publishes after every pass.

Other threads (control socket, metrics) only ever read a Snapshot, swapped in as one
reference, never the loop's live objects. `to_dict` is the status JSON document.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Health(enum.IntEnum):
    """Overall state; the values are agentctl's exit codes (monitoring-plugin style)."""

    OK = 0  # traffic tunnel up and the other tunnel ready
    DEGRADED = 1  # traffic flows, redundancy lost
    DOWN = 2  # no tunnel carries traffic
    UNKNOWN = 3  # agent unreachable (only agentctl uses this)


@dataclass(frozen=True)
class TunnelView:
    number: int
    ip: str
    api_status: str  # UP | DOWN | UNKNOWN (Platform API telemetry)
    ike_state: str  # ESTABLISHED, CONNECTING, ..., DOWN (no IKE SA)
    child_state: str  # INSTALLED, ..., NONE
    role: str  # active | standby
    established_seconds: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    last_inbound_seconds: int | None = None  # charon's use-in; None = no packet yet
    api_status_message: str = ""
    interface: str | None = None  # route mode: the tunnel's XFRM interface
    probe_sent: int = 0  # data-path probes sent through this tunnel
    probe_lost: int = 0
    probe_consecutive_failures: int = 0
    probe_rtt_ms: float | None = None  # of the last answered probe
    probe_healthy: bool = True  # fewer consecutive losses than probe.failures (or no probe)
    drained: bool = False  # `agentctl drain`: traffic kept away from this tunnel
    established_at: float | None = None  # unix time the current IKE SA came up
    # Counters across every CHILD_SA since the agent started (charon's restart per SA).
    bytes_in_total: int = 0
    bytes_out_total: int = 0
    packets_in_total: int = 0
    packets_out_total: int = 0
    initiates: dict[str, int] = field(default_factory=dict)  # initiate requests by result
    generation: int = 0  # of the far-end settings it runs (below the connection's while rolling)
    problem: str = ""  # why the tunnel cannot carry traffic now, if it cannot


@dataclass(frozen=True)
class FailoverView:
    """Traffic moved from one tunnel to the other."""

    at: float  # unix time
    from_tunnel: int
    to_tunnel: int
    reason: str  # for people
    kind: str = "down"  # a FailoverKind value: down, probe, liveness, silence, telemetry, drain, failback


@dataclass(frozen=True)
class ConnectionView:
    space: str
    vpn: str
    mode: str  # policy | route
    mode_reason: str
    source: str  # api | cache | static | none
    connection_status: str  # the API's connection status, or "unknown"
    health: Health
    summary: str  # one line for people: why the health is what it is
    api_error: str | None = None
    api_last_success: float | None = None  # unix time of the last good API answer
    tunnels: tuple[TunnelView, ...] = ()
    api_errors: dict[str, int] = field(default_factory=dict)  # Platform API failures by kind
    failovers: tuple[FailoverView, ...] = ()  # most recent last
    failover_counts: dict[str, int] = field(default_factory=dict)  # by kind, since start
    status_message: str = ""  # Heroku's
    stage: str = "unknown"  # a lifecycle.Stage value
    heroku_note: str = ""  # what Heroku says and what the agent does about it
    generation: int = 0  # of the far end's settings
    ha: str = "off"  # this node in an HA pair, for this connection: master | backup | fault; off without ha
    ha_reason: str = ""  # why (the virtual address, keepalived's word)
    # Exceptions contained while planning or applying this connection, by stage, since
    # start (core/faults); the summary says the last one while it lasts.
    connection_errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiBudgetView:
    """The Platform API's rate-limit pool as the poller last saw it, and the pace it polls
    at because of it. One pool per token, and the agent has one token: one per agent."""

    remaining: int | None  # tokens left; None: no answer carried RateLimit-Remaining yet
    poll_interval: float  # s the poller waits between two rounds now
    base_interval: float  # s it would wait with a full pool
    stretched: bool  # a low pool made the wait longer than base_interval
    calls_per_round: int  # one call per Heroku connection


@dataclass(frozen=True)
class HaView:
    """This node of an HA pair (ha.enabled)."""

    state: str  # master | backup | fault, the same for every connection; "mixed" otherwise
    keepalived: str | None  # keepalived's last notify since the agent started (agentctl ha); None: none yet
    enabled: bool = True  # always true when shown: ha.enabled


@dataclass(frozen=True)
class Snapshot:
    agent_version: str
    started_at: float  # unix time
    generated_at: float  # unix time
    charon_reachable: bool
    charon_version: str = ""
    ready: bool = False  # the first reconcile pass completed
    connections: tuple[ConnectionView, ...] = ()
    errors: tuple[str, ...] = field(default=())  # agent-wide problems, e.g. config reload
    api_budget: ApiBudgetView | None = None  # None: nothing polled (static connections only, or not yet)
    ha: HaView | None = None  # None: ha not enabled
    # s the loop's last reconcile pass took (observe, plan, apply); None before the first
    pass_seconds: float | None = None
    passes: int = 0  # reconcile passes completed since the agent started
    # s from the last pass to the next look, as planned (core/pace): 1, 10 while every
    # connection is steady, 0.25 while an IKE request is in flight; None before the first
    next_pass_seconds: float | None = None

    @property
    def health(self) -> Health:
        if not self.connections:
            return Health.DOWN
        return max(c.health for c in self.connections)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["health"] = self.health.name.lower()
        for conn, view in zip(data["connections"], self.connections):
            conn["health"] = view.health.name.lower()
        return data
