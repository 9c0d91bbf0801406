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
from dataclasses import dataclass, replace


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


# --- split brain ---------------------------------------------------------------------
# Both nodes hold the address when VRRP adverts are lost between them but both still
# reach the LAN and the WAN (multicast or protocol 112 dropped by a switch or a cloud
# network). Each then initiates, the far end keeps whichever IKE SA came last, and the
# LAN and the far end follow whichever gratuitous ARP came last: the two fight for as
# long as the split lasts. The guard: each node asks the segment who else answers for
# the address (an RFC 5227 probe, adapters/vip_guard); of two holders the one with the
# lower MAC keeps it, the other yields (its SAs go, keepalived is told to step aside
# through a track file, the address leaves it and only one node answers again).

#: A probe older than this is no evidence: the guard stopped (no CAP_NET_RAW, the
#: interface went). Then the node does not yield: two masters fighting is better than
#: no master at all.
PROBE_STALE_S = 5.0
#: A yielded node stays out while the winner still answers; this long without an answer
#: (the winner died or let the address go) and it may take over again.
WINNER_SILENT_S = 3.0


@dataclass(frozen=True)
class VipProbe:
    """Who else answered for the virtual address on its segment (adapters/vip_guard)."""

    at: float  # monotonic s, when the answers were collected
    own_mac: str  # of the interface probed, "aa:bb:cc:dd:ee:ff"
    others: frozenset[str]  # MACs of the other hosts that answered for the address
    vrrp_heard_at: float | None = None  # last VRRP advert from another host (monotonic s)


@dataclass(frozen=True)
class SplitBrain:
    """Another host answers for our address while we hold it too."""

    winner: str  # the lowest MAC among the holders: the node that keeps the address
    first_seen: float
    last_seen: float  # the winner's latest answer
    yielding: bool  # False: seen once, waiting for a second probe (a handover's overlap)

    def describe(self, vip: str) -> str:
        if not self.yielding:
            return f"{vip} is also answered from {self.winner} (checking again)"
        return (f"split brain: {vip} is also held by {self.winner}, whose lower MAC keeps it; this node "
                f"yields until VRRP adverts are heard again or {self.winner} stops answering")


def _mac_key(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def split_brain(previous: SplitBrain | None, probe: VipProbe | None, holds: bool, now: float) -> SplitBrain | None:
    """The next split-brain fact from the latest probe. Two probes in a row must agree
    before a node yields (keepalived may add the address on one node an instant before
    the other removes it); a yield ends when VRRP adverts come back (the pair can elect
    again) or the winner has been silent for WINNER_SILENT_S."""
    if probe is None or now - probe.at > PROBE_STALE_S:
        return None
    lower = sorted((m for m in probe.others if _mac_key(m) < _mac_key(probe.own_mac)), key=_mac_key)
    if previous is not None and previous.yielding:
        if probe.vrrp_heard_at is not None and probe.vrrp_heard_at > previous.first_seen:
            return None
        if lower:
            return replace(previous, winner=lower[0], last_seen=probe.at)
        return None if now - previous.last_seen > WINNER_SILENT_S else previous
    if not holds or not lower:
        return None
    if previous is None:
        return SplitBrain(lower[0], probe.at, probe.at, yielding=False)
    if probe.at > previous.last_seen:
        return SplitBrain(lower[0], previous.first_seen, probe.at, yielding=True)
    return previous
