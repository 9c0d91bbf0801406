"""How fast the agent may poll the Platform API. Every call costs one token of a pool
that belongs to the token's owner (4500 per account, refilled at 75 a minute) and is
shared with their other tools, so the agent stretches its polling as the pool runs low
rather than drain it. No side effects.
"""

from __future__ import annotations

from dataclasses import dataclass

POOL_SIZE = 4500  # tokens per account
REFILL_PER_SECOND = 75 / 60  # tokens
LOW_BUDGET = 1000  # tokens left below which polling stretches
SHARE_AT_LOW = 0.10  # of the refill the agent allows itself with LOW_BUDGET tokens left
MAX_STRETCH = 300.0  # s: however low the pool, a round of calls at least every 5 minutes
# 1 / (REFILL_PER_SECOND * SHARE_AT_LOW * remaining / LOW_BUDGET) = 8 s x 1000 / remaining
SECONDS_PER_CALL_AT_ONE_LEFT = LOW_BUDGET / (REFILL_PER_SECOND * SHARE_AT_LOW)


@dataclass(frozen=True)
class PollPace:
    """How long the poller waits between two rounds (one call per connection), and why."""

    interval: float  # s, what the poller waits now
    base_interval: float  # s, what it would wait with a full pool (api.poll_interval, or faster while provisioning)
    remaining: int | None  # tokens left as the API last reported; None: not reported yet
    calls_per_round: int = 1

    @property
    def stretched(self) -> bool:
        return self.interval > self.base_interval


def poll_pace(base_interval: float, remaining: int | None, calls_per_round: int = 1) -> PollPace:
    """The wait between two rounds of `calls_per_round` calls.

    With LOW_BUDGET tokens or more left (or nothing reported) it is `base_interval`.
    Below that the agent allows itself a share of the refill that shrinks with the pool:
    SHARE_AT_LOW of it (7.5 calls a minute) at LOW_BUDGET left, proportionally less below,
    nothing at 0. That is at least 8 s x 1000 / remaining per call, so a round waits
    `calls_per_round` times that: 8 s at 999 left, 38 s at 212, 80 s at 100. Never
    shorter than `base_interval` (the floor) and, however empty the pool, never longer
    than MAX_STRETCH unless `base_interval` itself is (the cap): the agent keeps
    looking, so a re-created VPN or AWS telemetry still reaches it.
    """
    if base_interval <= 0:
        raise ValueError(f"base_interval must be positive, got {base_interval}")
    calls = max(1, calls_per_round)
    if remaining is None or remaining >= LOW_BUDGET:
        return PollPace(base_interval, base_interval, remaining, calls)
    left = max(0, remaining)
    wanted = calls * SECONDS_PER_CALL_AT_ONE_LEFT / left if left else MAX_STRETCH
    interval = max(base_interval, min(MAX_STRETCH, wanted))
    return PollPace(interval, base_interval, left, calls)
