"""Two gateways, one public IP (a VRRP pair, keepalived): whether this node is the one
that runs the tunnels. Pure.

The node is master while the connection's local_address (the VRRP virtual address) is
on this host: only the holder can send from it, and the far end answers it. keepalived's
notify (`agentctl ha master|backup|fault`) says it at once, often before the address has
moved; the newer of the two facts wins. A backup keeps the tunnels loaded in charon and
holds no SA and no route, so the two nodes never fight over the far end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class HaState(enum.StrEnum):
    MASTER = "master"  # runs the tunnels
    BACKUP = "backup"  # standby: loaded, nothing initiated, no SA, no route
    FAULT = "fault"  # keepalived says this node cannot serve (a tracked link or script failed)


@dataclass(frozen=True)
class HaNotice:
    """keepalived's last word (its notify script): the state and when it came (monotonic s)."""

    state: HaState
    at: float


@dataclass(frozen=True)
class VipWatch:
    """Whether this host holds the virtual address, and since when (monotonic s)."""

    present: bool
    since: float


def observe_vip(previous: VipWatch | None, present: bool, now: float) -> VipWatch:
    if previous is not None and previous.present == present:
        return previous
    return VipWatch(present, now)


def ha_state(vip: str, watch: VipWatch, notice: HaNotice | None) -> tuple[HaState, str]:
    """(state, why): the newer of keepalived's notice and the last change of the address."""
    held = f"this node holds {vip}" if watch.present else f"{vip} is not on this node"
    if notice is not None and notice.at >= watch.since:
        if notice.state is HaState.MASTER and not watch.present:
            return HaState.BACKUP, f"keepalived says master, but {vip} is not on this node yet"
        return notice.state, f"keepalived says {notice.state.value} ({held})"
    return (HaState.MASTER if watch.present else HaState.BACKUP), held
