"""Policy mode's decisions: identical selectors share one kernel policy, so exactly one
tunnel (the active one) carries a CHILD_SA; the other keeps an IKE SA without children,
a hot standby one Quick Mode away from carrying traffic. Failover is make-before-break:
the new tunnel's CHILD_SA comes up before the old one goes. No side effects.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.charon_objects import CharonAction, InitiateChild, InitiateIke, TerminateChild
from agent.core.desired import DesiredConnection, DesiredTunnel
from agent.core.observation import CharonState, IkeState
from agent.core.tunnel_timing import TunnelTiming, needs_child_initiate

# IKEv2 standby is a childless IKE SA (RFC 6023). A peer that refuses childless
# initiation gets a regular one after this many failed tries; its child is then closed.
CHILDLESS_ATTEMPTS = 3


def adopt_active(conn: DesiredConnection, charon: CharonState, preferred: int | None) -> int:
    """At agent start: the tunnel that already carries a CHILD_SA keeps carrying it, so
    a restart changes nothing; else the preferred tunnel, else 1. Later decisions
    belong to the failover state machine."""
    carrying = [t.number for t in conn.tunnels if charon.tunnel(t.conn_name).installed_child is not None]
    if carrying:
        return preferred if preferred in carrying else carrying[0]
    return preferred or 1


def plan_policy_mode(
    conn: DesiredConnection,
    charon: CharonState,
    active: int,
    timing: Mapping[str, TunnelTiming],
    now: float,
) -> list[CharonAction]:
    """The active tunnel gets its CHILD_SA, the standby an IKE SA only."""
    active_tunnel = conn.tunnel(active)
    standby_tunnel = conn.tunnel(3 - active)
    active_sas = charon.tunnel(active_tunnel.conn_name)
    standby_sas = charon.tunnel(standby_tunnel.conn_name)
    standby_timing = timing.get(standby_tunnel.conn_name, TunnelTiming())
    actions: list[CharonAction] = []
    if _selectors(standby_tunnel) != _selectors(active_tunnel) and active_sas.installed_child is None:
        # A roll to new selectors (core/rolling) breaks before it makes: charon gives a
        # route that two policies share to the first one only, and takes it away with it,
        # so a new child installed while the old one lives would be left without a route.
        # One Quick Mode of loss instead of an outage until the next rekey.
        actions += [TerminateChild(standby_tunnel.conn_name, c.uniqueid) for c in standby_sas.children]
    if needs_child_initiate(active_sas, timing.get(active_tunnel.conn_name, TunnelTiming()), now):
        actions.append(InitiateChild(active_tunnel.conn_name))

    # Standby: an IKE SA only. Its children go once the active child carries traffic
    # (make-before-break; also cleans up what dpd_action=restart brings back).
    if standby_sas.ike_state is IkeState.DOWN:
        if standby_timing.may_initiate(now):
            if standby_tunnel.ike_version == 2 and standby_timing.attempts >= CHILDLESS_ATTEMPTS:
                actions.append(InitiateChild(standby_tunnel.conn_name))
            else:
                actions.append(InitiateIke(standby_tunnel.conn_name))
    elif active_sas.installed_child is not None:
        actions += [TerminateChild(standby_tunnel.conn_name, c.uniqueid) for c in standby_sas.children]
    return actions


def _selectors(tunnel: DesiredTunnel) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tunnel.child_ts
