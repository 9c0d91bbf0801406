"""A connection's health for people and monitors (agentctl's exit code, the metric),
derived from the same per-tunnel verdicts (TunnelHealth) the failover decides on, so
status can never say OK while the failover holds the active tunnel unhealthy.
No side effects.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.failover import TunnelHealth
from agent.core.snapshot import Health


def connection_verdict(health: Mapping[int, TunnelHealth], active: int | None,
                       charon_reachable: bool) -> tuple[Health, str]:
    """OK: a tunnel carries traffic (an installed, healthy CHILD_SA) and both are ready
    (policy mode: an established IKE SA; route mode: an installed CHILD_SA, no start-up
    grace); DEGRADED: traffic flows, redundancy lost; DOWN: nothing carries traffic."""
    if not charon_reachable:
        return Health.DOWN, "charon unreachable"
    if not health:
        return Health.DOWN, "VPN connection not known yet (Platform API)"
    carrying = [number for number, h in sorted(health.items()) if h.carrying and h.healthy]
    if not carrying:
        return Health.DOWN, "no tunnel carries traffic"
    not_ready = [f"tunnel {number}: {h.describe}" for number, h in sorted(health.items()) if not h.ready]
    if not_ready:
        return Health.DEGRADED, "redundancy lost: " + "; ".join(not_ready)
    shown = active if active in carrying else carrying[0]
    return Health.OK, f"tunnel {shown} active, redundancy ok"
