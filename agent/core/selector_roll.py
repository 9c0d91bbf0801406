"""Route mode: a CHILD_SA whose traffic selectors the far end no longer publishes (a
routable-CIDR update) is replaced without a break, under the same IKE SA.

First a new CHILD_SA with the new selectors (one Quick Mode or CREATE_CHILD_SA: the
conn already carries them, core/charon_objects reloaded it and kept the IKE SA), then
the old one is deleted. Inbound keeps arriving on whichever of the two the far end
uses meanwhile; AWS answers over whichever tunnel it picked, so the standby's child
carries traffic too and must not go away before its successor is installed. Policy
mode does not get this: its tunnels share selectors, and two generations of policies
on one tunnel would cross the other's. Level-triggered and pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.charon_objects import CharonAction, InitiateChild, TerminateChild
from agent.core.desired import DesiredConnection, DesiredTunnel
from agent.core.modes import Mode
from agent.core.observation import INSTALLED, CharonState, ChildState, TunnelSas
from agent.core.tunnel_timing import TunnelTiming

#: Children of old selectors that go once their successor is installed.
_ROLLED_OFF = frozenset({ChildState.INSTALLED, ChildState.REKEYING, ChildState.REKEYED})


def plan_selector_roll(conn: DesiredConnection, charon: CharonState, timing: Mapping[str, TunnelTiming],
                       now: float) -> list[CharonAction]:
    if conn.mode is not Mode.ROUTE:
        return []
    actions: list[CharonAction] = []
    for tunnel in conn.tunnels:
        actions += _roll_tunnel(tunnel, charon.tunnel(tunnel.conn_name), timing.get(tunnel.conn_name, TunnelTiming()),
                                now)
    return actions


def _roll_tunnel(tunnel: DesiredTunnel, sas: TunnelSas, timing: TunnelTiming, now: float) -> list[CharonAction]:
    installed = [c for c in sas.children if c.state == INSTALLED]
    # A rekeyed child of the old selectors goes with the installed one: charon keeps the
    # old policies while any child holds them, and the more specific of them would send
    # what arrives on the successor to a template that no longer matches (dropped).
    stale = [c for c in sas.children if c.state in _ROLLED_OFF and c.outdated(tunnel.child_ts)]
    if not stale:
        return []
    if any(not c.outdated(tunnel.child_ts) for c in installed):
        return [TerminateChild(tunnel.conn_name, c.uniqueid) for c in stale]  # its successor is up
    if len(installed) > 1 or any(sa.negotiating_child for sa in sas.ike_sas) or sas.established_ike is None:
        # Two children and neither with the new selectors (the far end narrowed them):
        # nothing more to try; one is being negotiated; or no IKE SA to put it under.
        return []
    return [InitiateChild(tunnel.conn_name)] if timing.may_initiate(now) else []
