"""Traffic selectors of a tunnel's CHILD_SA, and the one rule about several routable
CIDRs: IKEv1 negotiates only the first selector of a child (strongSwan's swanctl.opt)
and AWS allows one SA pair per tunnel, so with IKEv1 only the first CIDR would cross
the tunnel. The daemon, check-config and the doctor ask `selector_problem`, so they
cannot disagree. No side effects.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from agent.core.modes import Mode

#: Wide selectors: everything, both ways (AWS's own VTI-based strongSwan samples).
ANY = "0.0.0.0/0"


class TrafficSelectors(enum.Enum):
    """What the children negotiate (config key `traffic_selectors`)."""

    CIDRS = "cidrs"  # the routable CIDRs against the space CIDR
    WIDE = "wide"  # in route mode: 0.0.0.0/0 both ways, the routes choose what enters


def child_selectors(mode: Mode, selectors: TrafficSelectors, routable_cidrs: Sequence[str],
                    space_cidrs: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(local, remote) selectors of each tunnel's CHILD_SA. Wide ones only in route mode:
    there the policies are bound to the tunnel's XFRM interface (if_id), so only what is
    routed into it is encrypted; in policy mode 0.0.0.0/0 would take all of the host's
    traffic."""
    if selectors is TrafficSelectors.WIDE and mode is Mode.ROUTE:
        return (ANY,), (ANY,)
    return tuple(routable_cidrs), tuple(space_cidrs)


def selector_problem(ike_version: int, mode: Mode, routable_cidrs: Sequence[str],
                     selectors: TrafficSelectors) -> str | None:
    """Why these children would tunnel only part of the routable CIDRs, with the fixes;
    None when every CIDR gets through. `mode` may be AUTO (check-config, before the
    kernel is asked): wide selectors count there, the daemon and the doctor know whether
    route mode runs."""
    if ike_version != 1 or len(routable_cidrs) < 2:
        return None
    if selectors is TrafficSelectors.WIDE and mode is not Mode.POLICY:
        return None
    return f"{first_selector_only(routable_cidrs)}. Fix: {selector_fixes(mode)}"


def first_selector_only(routable_cidrs: Sequence[str]) -> str:
    """What goes wrong with IKEv1 and several routable CIDRs."""
    first, rest = routable_cidrs[0], ", ".join(routable_cidrs[1:])
    return (f"IKEv1 negotiates only the first traffic selector: of the routable CIDRs only {first} would cross "
            f"the tunnel, not {rest}")


def selector_fixes(mode: Mode) -> str:
    """The ways out, for a connection configured with `mode` (AUTO: not resolved yet)."""
    wide = ("in route mode (a kernel with XFRM interfaces), traffic_selectors: wide" if mode is Mode.POLICY
            else "set traffic_selectors: wide")
    return (f"switch the VPN to IKEv2 (one CHILD_SA carries every CIDR), or use one routable CIDR that summarises "
            f"them (heroku spaces:vpn:update), or {wide} (0.0.0.0/0 selectors; the routes choose what enters "
            f"the tunnel)")
