"""Pure parts of the HA benchmark (`space-vpn-lab bench-ha`): where the time goes after
the master's power-off, read from the notify events (unix times), the new master's charon
log (milliseconds since local midnight) and the LAN host's per-reply times; the table
rows and the JSON document. No side effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from space_vpn_lab.bench_report import utc_iso
from space_vpn_lab.bench_timeline import first_at_or_after, line_time, seconds_of_day
from space_vpn_lab.keepalived import VrrpEvent

IKE_UP = "IKE_SA "  # with " established between" on the same line
CHILD_UP = "CHILD_SA "  # with " established with SPIs"

HA_HEADERS = {"system": "system", "ms_lost": "ms lost", "outage": "outage", "vrrp": "VRRP takeover",
              "ike": "IKE_SA up", "child": "CHILD_SA up", "first_reply": "first reply", "error": "error"}


def takeover_ms(events: Sequence[VrrpEvent], t0_unix: float) -> int | None:
    """ms from t0 to the first MASTER the node's notify recorded after it."""
    later = [e.unix for e in events if e.state == "MASTER" and e.unix >= t0_unix]
    return round((min(later) - t0_unix) * 1000) if later else None


def established_ms(charon_log: str, kind: str, t0_unix: float) -> int | None:
    """ms from t0 to the first "IKE_SA ... established" (kind IKE_UP) or "CHILD_SA ...
    established" (CHILD_UP) line of a charon log written after t0."""
    t0 = seconds_of_day(t0_unix)
    lines = "\n".join(line for line in charon_log.splitlines()
                      if kind in line and " established " in line)
    at = first_at_or_after(lines, kind, t0)
    return round((at - t0) * 1000) if at is not None else None


def retrying_s(charon_log: str, t0_unix: float) -> float | None:
    """Seconds the node's charon had been trying to set up an IKE SA at t0 (its first
    "initiating ... IKE_SA" line before t0); None when it initiated nothing before t0,
    as a backup should."""
    t0 = seconds_of_day(t0_unix)
    for line in charon_log.splitlines():
        if "initiating " in line and "IKE_SA" in line:
            at = line_time(line)
            if at is not None:
                return round(t0 - at, 1) if at < t0 else None
    return None


def traffic_gap(replies: Sequence[float], t0_unix: float) -> tuple[float | None, float | None]:
    """(last reply before the gap, first reply after it) in unix time, for the longest
    gap between consecutive replies that ends after t0; (last reply, None) when no reply
    came after t0 at all. Replies in flight at t0 count as before the gap."""
    ordered = sorted(replies)
    before = [r for r in ordered if r <= t0_unix]
    if not ordered or ordered[-1] <= t0_unix:
        return (before[-1] if before else None), None
    pairs = [(a, b) for a, b in zip(ordered, ordered[1:]) if b > t0_unix]
    if not pairs:  # a single reply, after t0
        return None, ordered[0]
    return max(pairs, key=lambda pair: pair[1] - pair[0])


def gap_figures(replies: Sequence[float], t0_unix: float) -> dict[str, int | None]:
    """outage_ms (last reply before to first after the gap) and first_reply_ms (t0 to
    the first reply after it)."""
    start, end = traffic_gap(replies, t0_unix)
    return {"outage_ms": round((end - start) * 1000) if start is not None and end is not None else None,
            "first_reply_ms": round((end - t0_unix) * 1000) if end is not None else None}


def _ms(value: int | None, never: str = "never") -> str:
    return never if value is None else f"{value} ms"


def build_row(run: dict[str, Any]) -> dict[str, str]:
    if run.get("error"):
        return {"system": run["system"], "ms_lost": "error", "error": run["error"].splitlines()[0][:80]}
    cap = f"never (> {run.get('cap_s', 0):g} s)"
    return {"system": run["system"], "ms_lost": str(run["ms_lost"]), "outage": _ms(run.get("outage_ms"), cap),
            "vrrp": _ms(run.get("vrrp_takeover_ms")), "ike": _ms(run.get("ike_up_ms")),
            "child": _ms(run.get("child_up_ms")), "first_reply": _ms(run.get("first_reply_ms"), cap)}


def notes(runs: Sequence[dict[str, Any]], interval_s: float, advert_int_s: float) -> list[str]:
    head = (f"Master powered off (links down, keepalived, charon and agent killed) while the LAN host pings "
            f"the space host every {interval_s:g} s through the LAN VIP; VRRPv3 advert_int {advert_int_s:g} s, "
            f"nopreempt. Times from the power-off: VRRP takeover from the new master's notify, IKE_SA/CHILD_SA "
            f"up from its charon log, first reply from ping -D; ms lost = lost pings x measured spacing.")
    out = [head]
    plain = [r for r in runs if r["system"] == "strongswan" and not r.get("error")]
    if plain:
        figures = ", ".join(f"{r.get('backup_retrying_s')} s -> {_ms(r.get('outage_ms'))}" for r in plain)
        out.append(f"strongswan: the new master's charon had been retrying from the VIP it did not hold, and got "
                   f"through at its next IKE retransmission after the VIP arrived (charon's defaults: 4, 7.2, 13, "
                   f"23.3, 42 s apart, then 75.6 s until it starts over), so its loss depends on where that cycle "
                   f"stood at the power-off. Retrying at the power-off -> outage: {figures}.")
    return out


def report_document(runs: list[dict[str, Any]], *, interval_s: float, advert_int_s: float, started: float,
                    finished: float, notes_: list[str]) -> dict[str, Any]:
    return {"schema": 1, "bench": "ha", "generated_at": utc_iso(finished), "started_at": utc_iso(started),
            "duration_s": round(finished - started, 1), "interval_s": interval_s, "advert_int_s": advert_int_s,
            "notes": notes_, "runs": runs}
