"""SAs that will not recover on their own, and the actions that drop them so the tunnel
is initiated afresh: negotiations stuck for connect_timeout, and a standby whose SAs the
far end forgot. Both modes use these. No side effects.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.charon_objects import CharonAction, TerminateIke, terminate_all
from agent.core.desired import DesiredConnection
from agent.core.failover import TunnelHealth
from agent.core.observation import CharonState, IkeState
from agent.core.tunnel_timing import TunnelTiming


def plan_stuck(conn: DesiredConnection, charon: CharonState, timing: Mapping[str, TunnelTiming],
               now: float, connect_timeout: float) -> list[CharonAction]:
    """Drop what has been negotiating for connect_timeout, so the next initiate (backoff
    permitting) starts afresh; charon's own retransmits grow to 40 s and more, far too
    slow to notice an endpoint that came back from maintenance:
    - an IKE SA still CONNECTING;
    - an established IKE SA whose first CHILD_SA never comes (the far end forgot that
      IKE SA, e.g. its endpoint was replaced right after Main Mode): every initiate
      would queue behind the Quick Mode it keeps retransmitting."""
    actions: list[CharonAction] = []
    for tunnel in conn.tunnels:
        tunnel_timing = timing.get(tunnel.conn_name, TunnelTiming())
        sas = charon.tunnel(tunnel.conn_name)
        since = tunnel_timing.connecting_since
        if since is not None and now - since >= connect_timeout:
            actions += [TerminateIke(tunnel.conn_name, sa.uniqueid) for sa in sas.ike_sas
                        if sa.state == IkeState.CONNECTING]
        since = tunnel_timing.child_negotiating_since
        if since is not None and now - since >= connect_timeout:
            actions += [TerminateIke(tunnel.conn_name, sa.uniqueid) for sa in sas.ike_sas if sa.negotiating_child]
    return actions


def plan_replace_broken(conn: DesiredConnection, charon: CharonState, active: int,
                        health: Mapping[int, TunnelHealth]) -> list[CharonAction]:
    """A standby tunnel that is up but failed its probes (or went silent) holds stale
    SAs: the far end forgot them. Drop them so the tunnel is initiated afresh, but only
    while the active tunnel carries traffic fine (else the probe target may be at fault)."""
    standby = conn.tunnel(3 - active)
    active_ok = health[active].can_carry and charon.tunnel(conn.tunnel(active).conn_name).installed_child
    broken = health[standby.number].usable and not health[standby.number].healthy
    if not (broken and active_ok):
        return []
    return terminate_all(standby.conn_name, charon.tunnel(standby.conn_name))
