"""A tunnel's timing as the loop keeps it between passes: since when it is up or down,
how many initiates it has had, and when the next one may go (capped exponential
backoff with jitter). Also the one rule both modes share for bringing a CHILD_SA up.
Pure: no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.core.observation import INSTALLED, LIVE_CHILD_STATES, IkeState, TunnelSas

BACKOFF_BASE = 1.0  # s, first retry
BACKOFF_CAP = 5.0  # s, retries never wait longer: a replaced endpoint comes back at any time


@dataclass(frozen=True)
class TunnelTiming:
    attempts: int = 0  # initiates since the tunnel last reached its desired state
    next_attempt_at: float = 0.0  # monotonic s; initiates wait until then (backoff)
    unestablished_since: float | None = None  # monotonic s the IKE SA stopped being up
    ever_established: bool = False  # since this agent started
    uninstalled_since: float | None = None  # monotonic s the tunnel stopped having an installed CHILD_SA
    ever_installed: bool = False  # since this agent started
    installed_at: float | None = None  # monotonic s the installed CHILD_SA was first seen (None: none now)
    connecting_since: float | None = None  # monotonic s an IKE SA was first seen CONNECTING
    child_negotiating_since: float | None = None  # monotonic s a CHILD_SA was first seen in negotiation
    exchange_pending_since: float | None = None  # monotonic s an IKE request of ours was first seen in flight

    def may_initiate(self, now: float) -> bool:
        """The backoff gate: no initiate before next_attempt_at."""
        return now >= self.next_attempt_at

    def initiated(self, now: float, jitter: float) -> "TunnelTiming":
        """After an initiate request: one more attempt, and the next one waits."""
        attempts = self.attempts + 1
        return replace(self, attempts=attempts, next_attempt_at=now + backoff_delay(attempts, jitter))

    def goal_reset(self) -> "TunnelTiming":
        """A new goal, or a goal reached: the backoff starts afresh."""
        return replace(self, attempts=0, next_attempt_at=0.0)


def observe_timing(timing: TunnelTiming, sas: TunnelSas, now: float) -> TunnelTiming:
    """Advance a tunnel's timing by one observation."""
    up = sas.ike_state is IkeState.ESTABLISHED
    installed = sas.installed_child is not None
    connecting = any(sa.state == IkeState.CONNECTING for sa in sas.ike_sas) and not up
    return replace(
        timing,
        unestablished_since=None if up else (timing.unestablished_since or now),
        ever_established=timing.ever_established or up,
        uninstalled_since=None if installed else (timing.uninstalled_since or now),
        ever_installed=timing.ever_installed or installed,
        installed_at=(timing.installed_at or now) if installed else None,
        connecting_since=(timing.connecting_since or now) if connecting else None,
        child_negotiating_since=(timing.child_negotiating_since or now) if sas.negotiating_child else None,
        exchange_pending_since=(timing.exchange_pending_since or now) if sas.request_in_flight else None,
    )


def needs_child_initiate(sas: TunnelSas, timing: TunnelTiming, now: float) -> bool:
    """A tunnel that should carry a CHILD_SA and has none alive gets an initiate, if its
    IKE SA is established (one Quick Mode) or absent, and its backoff permits. A
    CONNECTING IKE SA, or a Quick Mode / CREATE_CHILD_SA in flight on an established
    one, means charon is on it already (a second one would duplicate the child, and
    IKEv1 leaves the first REKEYED); a stuck exchange is plan_stuck's."""
    if any(c.state in LIVE_CHILD_STATES for c in sas.children) or any(sa.negotiating_child for sa in sas.ike_sas):
        return False
    return sas.ike_state in (IkeState.ESTABLISHED, IkeState.DOWN) and timing.may_initiate(now)


def reached_desired_state(sas: TunnelSas, wants_child: bool,
                          child_ts: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> bool:
    """True when the tunnel is where the plan wants it (resets its backoff). With
    `child_ts`, only a CHILD_SA negotiated with those selectors counts (a selector roll
    is a goal of its own: its retries back off)."""
    if wants_child:
        return any(c.state == INSTALLED and not (child_ts and c.outdated(child_ts)) for c in sas.children)
    return sas.ike_state is IkeState.ESTABLISHED


def backoff_delay(attempts: int, jitter: float, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Capped exponential backoff. `jitter` in [0, 1) spreads retries by up to 20 %."""
    delay = min(cap, base * 2.0 ** min(max(0, attempts - 1), 32))  # exponent bounded: no overflow
    return delay * (0.8 + 0.4 * jitter)
