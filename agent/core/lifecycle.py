"""The VPN connection's life at Heroku, as the loop sees it through the Platform API:
what one answer or failure makes of the far end, and what its stage means for a pass.

A connection is created (404 for a while, then pending/provisioning for minutes), becomes
active, may fail ("supplied CIDR block already in use"), is updated, and is destroyed
and re-created to rotate its keys. Nothing that runs is torn down because an answer is
incomplete: only a connection gone for `forget_deleted_after` is unloaded. Pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from agent.core.memory import ConnectionSettings, FarEnd
from agent.core.model import ConnectionStatus, VpnAnswer, VpnConnection
from agent.core.rolling import published


class Stage(enum.StrEnum):
    """Where the connection is in its life, for decisions and status."""

    UNKNOWN = "unknown"  # no answer yet (API unreachable, no cache)
    WAITING = "waiting"  # being created at Heroku: pending, provisioning, or 404 within the grace
    ACTIVE = "active"
    FAILED = "failed"  # Heroku gave up on it: the operator must act
    NOT_FOUND = "not_found"  # 404 past the grace, never seen active: a wrong name
    GONE = "gone"  # deleted at Heroku; its tunnels stay for a while
    FORGOTTEN = "forgotten"  # deleted long enough: its tunnels are unloaded


@dataclass(frozen=True)
class Life:
    stage: Stage
    note: str = ""  # for people: what Heroku says and what the agent does about it


def align_tunnels(previous: VpnConnection | None, new: VpnConnection) -> VpnConnection:
    """Tunnels carry no id (the CLI names them by array order), but each has an IP: a
    tunnel keeps its number while its IP stays, so a reordered answer changes nothing,
    and a new IP takes the number of the one it replaced."""
    if previous is None:
        return new
    old_ips = [t.ip for t in previous.tunnels]
    kept = {number: t for number, ip in enumerate(old_ips, start=1) for t in new.tunnels if t.ip == ip}
    newcomers = [t for t in new.tunnels if t.ip not in old_ips]
    slots = {number: kept[number] if number in kept else newcomers.pop(0)
             for number in range(1, len(new.tunnels) + 1)}
    tunnels = tuple(replace(slots[n], number=n) for n in sorted(slots))
    return replace(new, tunnels=tunnels)


def far_end_after_answer(far_end: FarEnd, answer: VpnAnswer | None, now: float, wall_now: float,
                         heroku_clock: float | None = None) -> FarEnd:
    """One 200 (or, `answer` None, a 304: what we have is current). `now` monotonic,
    `wall_now` unix, `heroku_clock` the answer's (adapters/heroku.FetchResult)."""
    far_end = replace(far_end, api_error=None, api_error_kind=None, api_last_success=wall_now, missing_since=None,
                      heroku_clock=heroku_clock if heroku_clock is not None else far_end.heroku_clock)
    if answer is None:
        return far_end
    far_end = replace(far_end, connection_status=answer.status_text, status_message=answer.status_message)
    if answer.status.is_gone:
        return replace(far_end, gone_since=far_end.gone_since or now)
    if answer.connection is None:
        # Pending, provisioning, failed: the new connection of a re-creation is often in
        # these stages while the old tunnels still run. They stay as they are.
        return far_end
    vpn = align_tunnels(far_end.vpn, answer.connection)
    changed = far_end.vpn is None or any(
        not a.same_as(b) for a, b in zip(published(far_end.vpn, 0).values(), published(vpn, 0).values()))
    generation = far_end.generation + 1 if changed or not far_end.generation else far_end.generation
    return replace(far_end, vpn=vpn, source="api", generation=generation, gone_since=None)


def far_end_after_not_found(far_end: FarEnd, now: float) -> FarEnd:
    """404: right after a create the API may not know the connection yet; after it was
    active (from the API or the cache), it was deleted."""
    if far_end.vpn is not None and far_end.source != "static":
        return replace(far_end, gone_since=far_end.gone_since or now, connection_status="not found")
    return replace(far_end, missing_since=far_end.missing_since or now)


def heroku_now(far_end: FarEnd, now: float, wall_now: float) -> float:
    """Heroku's unix time now: by its last Date header when known (our wall clock may be
    stepped, or off), else by our wall clock."""
    return now + far_end.heroku_clock if far_end.heroku_clock is not None else wall_now


def life_of(far_end: FarEnd, settings: ConnectionSettings, now: float) -> Life:
    """The connection's stage now (`now` monotonic), and what status should say about it."""
    message = f": {far_end.status_message}" if far_end.status_message else ""
    if far_end.gone_since is not None:
        gone_for = now - far_end.gone_since
        left = settings.forget_deleted_after - gone_for
        what = f"deleted at Heroku ({far_end.connection_status}{message}) {_ago(gone_for)}"
        if left <= 0:
            return Life(Stage.FORGOTTEN, f"{what}; its tunnels are unloaded")
        return Life(Stage.GONE, f"{what}; its tunnels are unloaded in {_ago(left)} unless it returns")
    if far_end.missing_since is not None and far_end.vpn is None:
        missing_for = now - far_end.missing_since
        if missing_for < settings.not_found_grace:
            return Life(Stage.WAITING, f"waiting for Heroku: the VPN connection is not found yet ({_ago(missing_for)}; "
                                       "a new one can take a while to appear)")
        return Life(Stage.NOT_FOUND, f"the VPN connection is not found at Heroku (for {_ago(missing_for)}): "
                                     f"check the space and vpn names (heroku spaces:vpn:info {settings.vpn} "
                                     f"-s {settings.space})")
    status = ConnectionStatus.parse(far_end.connection_status)
    if status is ConnectionStatus.FAILED:
        return Life(Stage.FAILED, f"Heroku reports the VPN connection failed{message}")
    if status.is_waiting or (status is ConnectionStatus.UNKNOWN and far_end.connection_status != "unknown"
                             and far_end.vpn is None):
        return Life(Stage.WAITING, f"waiting for Heroku: the VPN connection is {far_end.connection_status}{message}")
    if far_end.vpn is None:
        return Life(Stage.UNKNOWN)
    return Life(Stage.ACTIVE)


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"
