"""The data-plane mode and the one rule that resolves `auto`: route mode where the
kernel has XFRM interfaces, else policy mode. The daemon (at start and on reload) and
the doctor ask this function, so they cannot disagree.
"""

from __future__ import annotations

import enum


class Mode(enum.Enum):
    """Data-plane mode from the config; AUTO is resolved at start-up."""

    AUTO = "auto"
    ROUTE = "route"
    POLICY = "policy"


class ModeUnavailable(ValueError):
    """`mode: route` on a kernel without XFRM interfaces."""


def resolve_mode(wanted: Mode, route_unsupported: str | None) -> tuple[Mode, str]:
    """The mode to run and why. `route_unsupported` is None where the kernel has XFRM
    interfaces, else the reason it has not. Raises ModeUnavailable for `route` there."""
    if wanted is Mode.ROUTE:
        if route_unsupported:
            raise ModeUnavailable(f"mode: route is not possible here: {route_unsupported}; use auto or policy")
        return Mode.ROUTE, "configured"
    if wanted is Mode.AUTO:
        if route_unsupported:
            return Mode.POLICY, f"auto: policy, since {route_unsupported}"
        return Mode.ROUTE, "auto: route, the kernel has XFRM interfaces"
    return Mode.POLICY, "configured"
