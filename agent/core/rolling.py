"""Changes of the far end's settings without an outage: which settings each tunnel runs
in this pass, and when traffic must leave a tunnel so that it can take the new ones.

The API gives a connection's settings as a whole (a routable-CIDR update changes both
tunnels, a re-creation brings new keys for both), but the two tunnels exist so that one
carries traffic while the other changes. So a change rolls: first the tunnel that does
not carry traffic takes the new settings; once it is up and healthy on them, traffic
moves to it (make-before-break in policy mode, a route move in route mode); then the
other one takes them. Both change in the same pass only when neither carries traffic.
A tunnel that carries traffic but fails (probes lost, ...) is not kept on old settings:
the far end may have changed under it (a re-creation), and failover moves traffic anyway.
Level-triggered: each pass re-derives this from what runs and what is published. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.core.failover import TunnelHealth
from agent.core.model import Secret, VpnConnection


@dataclass(frozen=True)
class TunnelSettings:
    """What one tunnel is built from, as the far end published it in one generation
    (generations count the far end's changes since the agent started, from 1)."""

    generation: int
    ip: str
    psk: Secret = field(repr=False)
    ike_version: int
    routable_cidrs: tuple[str, ...]
    space_cidr_block: str

    def same_ike(self, other: "TunnelSettings") -> bool:
        """Equal in everything its IKE SA is built from: only the selectors differ."""
        return (self.ip, self.psk, self.ike_version) == (other.ip, other.psk, other.ike_version)

    def same_as(self, other: "TunnelSettings") -> bool:
        """Equal in everything that goes into charon; the generation is only a label."""
        return (self.ip, self.psk, self.ike_version, self.routable_cidrs, self.space_cidr_block) == (
            other.ip, other.psk, other.ike_version, other.routable_cidrs, other.space_cidr_block)


def published(vpn: VpnConnection, generation: int) -> dict[int, TunnelSettings]:
    """Each tunnel's settings in the far end's latest description."""
    return {t.number: TunnelSettings(generation, t.ip, t.psk, vpn.ike_version, tuple(vpn.routable_cidrs),
                                     vpn.space_cidr_block)
            for t in vpn.tunnels}


@dataclass(frozen=True)
class RollPlan:
    settings: Mapping[int, TunnelSettings]  # what each tunnel runs in this pass
    retiring: int | None = None  # the active tunnel, still on old settings: move traffic off it

    @property
    def generations(self) -> dict[int, int]:
        return {number: s.generation for number, s in self.settings.items()}


def plan_roll(target: Mapping[int, TunnelSettings], running: Mapping[int, TunnelSettings],
              active: int | None, health: Mapping[int, TunnelHealth], *, route_mode: bool) -> RollPlan:
    """`running`: what each tunnel ran in the last pass (empty at start); `active` and
    `health` as the last pass left them.

    A tunnel carries traffic while it holds an installed CHILD_SA that works and the
    traffic goes to it: in policy mode that is any tunnel with a child (right after a
    move the old child carries until the new one is installed), in route mode the
    active one (the route points there). In route mode new selectors alone need no
    move: each tunnel replaces its CHILD_SA under the same IKE SA, the new one up
    before the old one goes (core/selector_roll), so both take them at once."""
    stale = {n for n in target if n in running and not running[n].same_as(target[n])}
    carrying = {n for n in stale if _carries(health.get(n)) and (not route_mode or n == active)
                and not (route_mode and running[n].same_ike(target[n]))}
    settings = {n: running[n] if n in carrying else target[n] for n in target}
    retiring = None
    if active in carrying:
        # The other takes the new settings first; traffic leaves once it is up on them
        # (its health is of what it ran in the last pass).
        other, other_ran = health.get(3 - active), running.get(3 - active)
        if other_ran is not None and other_ran.same_as(target[3 - active]) and other is not None and other.ready:
            retiring = active
    return RollPlan(settings, retiring)


def _carries(health: TunnelHealth | None) -> bool:
    return health is not None and health.carrying and health.can_carry
