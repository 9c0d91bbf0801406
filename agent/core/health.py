"""Data-path probe bookkeeping per tunnel: consecutive losses decide health.

Pure: the loop feeds each probe result in and keeps the returned value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ProbeStats:
    sent: int = 0
    lost: int = 0
    consecutive_failures: int = 0
    last_rtt: float | None = None  # s, of the last answered probe
    last_ok_at: float | None = None  # monotonic s

    def record(self, ok: bool, rtt: float | None, at: float) -> "ProbeStats":
        if ok:
            return replace(self, sent=self.sent + 1, consecutive_failures=0, last_rtt=rtt, last_ok_at=at)
        return replace(self, sent=self.sent + 1, lost=self.lost + 1,
                       consecutive_failures=self.consecutive_failures + 1)


def probe_healthy(stats: ProbeStats | None, failures: int) -> bool:
    """No probe configured (None) counts as healthy: other signals decide then."""
    return stats is None or stats.consecutive_failures < failures
