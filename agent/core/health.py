"""Data-path probes (what to probe, what came back, consecutive losses per tunnel),
inbound silence and true traffic counters: the raw signals health is assessed from.

Pure: the loop feeds each probe result in and keeps the returned value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ProbeTarget:
    """One tunnel's probe. target: an IPv4 address or a host name; interval, timeout
    and resolve_interval (how often a name is looked up again) in seconds; port None
    means ICMP echo, else a TCP connect to it; interface None means the kernel's route
    decides the tunnel (policy mode)."""

    key: str
    tunnel: int
    target: str
    source: str
    interface: str | None
    interval: float
    timeout: float
    port: int | None = None
    resolve_interval: float = 60.0

    @property
    def slot(self) -> tuple[str, int]:
        """Identity inside a Prober: one probe stream per connection and tunnel."""
        return (self.key, self.tunnel)


@dataclass(frozen=True)
class ProbeResult:
    """rtt in seconds (None when no reply); sent_at on the Prober's clock (monotonic)."""

    key: str
    tunnel: int
    ok: bool
    rtt: float | None
    sent_at: float


# Probe results older than this say nothing about a tunnel now (it is no longer probed).
PROBES_STALE_AFTER = 5.0  # s


@dataclass(frozen=True)
class ProbeStats:
    sa_id: str = ""  # the IKE SA the probes went through: a new SA starts a clean slate
    sent: int = 0
    lost: int = 0
    consecutive_failures: int = 0
    last_rtt: float | None = None  # s, of the last answered probe
    last_ok_at: float | None = None  # monotonic s
    last_at: float | None = None  # monotonic s the last probe counted here was sent

    def record(self, ok: bool, rtt: float | None, at: float) -> "ProbeStats":
        if ok:
            return replace(self, sent=self.sent + 1, consecutive_failures=0, last_rtt=rtt, last_ok_at=at, last_at=at)
        return replace(self, sent=self.sent + 1, lost=self.lost + 1,
                       consecutive_failures=self.consecutive_failures + 1, last_at=at)

    def stale(self, now: float) -> bool:
        """No probe went through this tunnel lately (policy mode probes only the active
        one): what they said then is no verdict on the present."""
        return self.last_at is None or now - self.last_at > PROBES_STALE_AFTER


def probe_healthy(stats: ProbeStats | None, failures: int) -> bool:
    """No probe configured (None) counts as healthy: other signals decide then."""
    return stats is None or stats.consecutive_failures < failures


@dataclass(frozen=True)
class InboundWatch:
    """Inbound silence of the CHILD_SA that carries traffic (policy mode): packets keep
    going out and nothing comes back. Counters restart with every new CHILD_SA."""

    child_id: str = ""
    packets_in: int = 0
    packets_out: int = 0
    silent_since: float | None = None  # monotonic s of the first send left unanswered
    last_send: float | None = None  # monotonic s of the latest send since then

    def update(self, child_id: str, packets_in: int, packets_out: int, now: float) -> "InboundWatch":
        if child_id != self.child_id or packets_in != self.packets_in:
            return InboundWatch(child_id, packets_in, packets_out)  # something came back
        if packets_out > self.packets_out:
            return InboundWatch(child_id, packets_in, packets_out, self.silent_since or now, now)
        return self

    def silent_for(self, now: float) -> float:
        """How long we have kept sending without an answer (idle time does not count)."""
        if self.silent_since is None or self.last_send is None:
            return 0.0
        return self.last_send - self.silent_since


@dataclass(frozen=True)
class TrafficTotals:
    """Bytes and packets of one tunnel as true counters: charon's restart with every
    new CHILD_SA (rekey, re-establishment), so children that are gone are kept here.
    Values are (bytes_in, bytes_out, packets_in, packets_out)."""

    retired: tuple[int, int, int, int] = (0, 0, 0, 0)
    live: tuple[tuple[str, tuple[int, int, int, int]], ...] = ()  # by CHILD_SA uniqueid

    def update(self, children) -> "TrafficTotals":
        """`children`: the tunnel's ChildSa objects as observed now."""
        current = {c.uniqueid: (c.bytes_in, c.bytes_out, c.packets_in, c.packets_out) for c in children}
        retired = list(self.retired)
        for child_id, counts in self.live:
            if child_id in current:  # a live counter never goes back
                current[child_id] = tuple(max(a, b) for a, b in zip(current[child_id], counts))
            else:
                retired = [r + c for r, c in zip(retired, counts)]
        return TrafficTotals(tuple(retired), tuple(sorted(current.items())))

    @property
    def totals(self) -> tuple[int, int, int, int]:
        result = list(self.retired)
        for _, counts in self.live:
            result = [r + c for r, c in zip(result, counts)]
        return tuple(result)
