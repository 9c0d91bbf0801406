"""The soak's report from what a run measured: losses per event and outside events, the
share lost outside the maintenance (the goal: under 0.1 %), resources with their trend,
and the markdown beside the JSON. Pure: no side effects, figures in, data and text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from space_vpn_lab.bench_report import utc_iso
from space_vpn_lab.soak_plan import OUTSIDE, LossRun, Plan, attribute, ms_of, share_lost, windows
from space_vpn_lab.soak_report import cpu_per_hour, resource_trends

GOAL_OUTSIDE_SHARE = 0.001  # the goal: under 0.1 % of pings lost outside maintenance
RUNS_KEPT = 200  # loss runs listed outside events (the count and ms cover all of them)
RESOURCES = ("rss_kib", "fds", "threads")


def plan_json(plan: Plan) -> dict[str, Any]:
    return {"seed": plan.seed, "duration_s": plan.duration_s, "lead_s": plan.lead_s, "tail_s": plan.tail_s,
            "events": [{"index": e.index, "at_s": e.at_s, "kind": e.kind.value, "role": e.role.value,
                        "down_s": e.down_s} for e in plan.events]}


def event_spans(played: Sequence[dict[str, Any]]):
    """The attribution windows of the events as played (one never restored ends at its start)."""
    return windows([(e["index"], e["started_s"], e.get("restored_s") or e["started_s"]) for e in played])


def _runs_json(runs: Sequence[LossRun]) -> list[list[float]]:
    return [[r.after_s, r.before_s, r.lost] for r in runs]


def losses(played: Sequence[dict[str, Any]], runs: Sequence[LossRun], sent: int, spacing_s: float,
           failovers: Sequence[dict[str, Any]] = (), stopped_s: float | None = None) -> dict[str, Any]:
    """Per event: pings and ms lost, its loss runs, failovers in its window, whether replies
    came back after its last loss; outside events the same, and the share of all pings."""
    spans = event_spans(played)
    found = attribute(runs, spans)
    by_index = {s.index: s for s in spans}
    events = []
    for event in played:
        mine = found.by_event.get(event["index"], ())
        span = by_index[event["index"]]
        back = max((r.before_s for r in mine), default=None)
        recovered = stopped_s is None or back is None or back < stopped_s - 0.5
        events.append({**event, "lost": found.lost(event["index"]), "ms_lost": ms_of(found.lost(event["index"]),
                                                                                      spacing_s),
                       "window_s": [span.start_s, span.end_s], "loss_runs": _runs_json(mine),
                       "traffic_back_s": None if back is None else round(back - event["started_s"], 3),
                       "recovered": recovered,
                       "failovers": [f for f in failovers if span.start_s - 1.0 <= f["t_s"] <= span.end_s]})
    outside_lost = found.lost(None)
    in_spans = [f for f in failovers if any(s.start_s - 1.0 <= f["t_s"] <= s.end_s for s in spans)]
    share = share_lost(outside_lost, sent)
    return {"events": events, "in_events_lost": sum(e["lost"] for e in events),
            "in_events_ms": sum(e["ms_lost"] for e in events),
            "outside": {"lost": outside_lost, "ms_lost": ms_of(outside_lost, spacing_s), "runs": len(found.outside),
                        "loss_runs": _runs_json(found.outside[:RUNS_KEPT]),
                        "failovers": [f for f in failovers if f not in in_spans]},
            "outside_share": share, "outside_share_pct": None if share is None else round(share * 100, 4),
            "goal_outside_share": GOAL_OUTSIDE_SHARE,
            "goal_met": None if share is None else share < GOAL_OUTSIDE_SHARE,
            "total_lost": sum(r.lost for r in runs), "total_ms": ms_of(sum(r.lost for r in runs), spacing_s)}


def resources(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per process sampled: count, trends of RSS, fds and threads, CPU seconds per hour."""
    return {name: {"samples": len(points), **resource_trends(points, RESOURCES),
                   "cpu_s_per_h": cpu_per_hour(points)}
            for name, points in samples.items()}


def document(plan: Plan, systems: dict[str, dict[str, Any]], *, interval_s: float, started: float,
             finished: float, notes: Sequence[str], lifetimes: dict[str, Any]) -> dict[str, Any]:
    return {"schema": 1, "kind": "soak", "generated_at": utc_iso(finished), "started_at": utc_iso(started),
            "wall_s": round(finished - started, 1), "interval_s": interval_s, "lifetimes": lifetimes,
            "plan": plan_json(plan), "notes": list(notes), "systems": systems}


# --- markdown ----------------------------------------------------------------------------------------

NAMES = {"agent": "agent", "strongswan": "plain strongSwan"}


def _trend_cell(res: dict[str, Any] | None, key: str, unit: str = "", scale: float = 1.0) -> str:
    found = (res or {}).get(key)
    if not found:
        return "-"
    first, last, top = (round(found[k] / scale, 1) if scale != 1.0 else int(found[k]) for k in ("first", "last", "max"))
    return f"{first:g}→{last:g}{unit} (max {top:g}; {found['verdict']})"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.3f} %"


def summary_rows(systems: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, rec in systems.items():
        if rec.get("error"):
            rows.append([NAMES.get(name, name), "error: " + rec["error"].splitlines()[0][:80]] + ["-"] * 10)
            continue
        loss, res = rec["loss"], rec.get("resources", {})
        agent = res.get("agent")
        rows.append([
            NAMES.get(name, name), str(len(loss["events"])), f"{loss['in_events_ms']:,}",
            f"{loss['outside']['ms_lost']:,}", _pct(loss["outside_share"]),
            str(rec["rekeys"]["customer"]["child_rekeys"]), str(rec["rekeys"]["customer"]["ike_rekeys"]),
            "-" if rec.get("failovers") is None else str(len(rec["failovers"])),
            _trend_cell(agent, "rss_kib", " MiB", 1024.0), _trend_cell(agent, "fds"), _trend_cell(agent, "threads"),
            "-" if not agent or agent.get("cpu_s_per_h") is None else f"{agent['cpu_s_per_h']:g}",
            "-" if rec.get("anomalies") is None else str(rec["anomalies"]["count"]),
        ])
    return rows


SUMMARY_HEADERS = ["system", "events", "ms lost in events", "ms lost outside", "share lost outside",
                   "CHILD rekeys", "IKE rekeys", "failovers", "agent RSS", "agent fds", "agent threads",
                   "agent CPU s/h", "anomalies"]


def event_rows(systems: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per planned event, a column of ms lost (and the tunnel hit) per system."""
    names = [n for n, r in systems.items() if not r.get("error")]
    headers = ["#", "at s", "kind", "role", *(f"{NAMES.get(n, n)}: tunnel, ms lost" for n in names)]
    by_system = {n: {e["index"]: e for e in systems[n]["loss"]["events"]} for n in names}
    indexes = sorted({i for events in by_system.values() for i in events})
    rows = []
    for index in indexes:
        some = next(events[index] for events in by_system.values() if index in events)
        cells = [str(index + 1), f"{some['at_s']:.0f}", some["kind"], some["role"]]
        for name in names:
            event = by_system[name].get(index)
            if event is None:
                cells.append("not played")
            else:
                note = "" if event["recovered"] else ", not recovered"
                note += f", error: {event['error'][:40]}" if event.get("error") else ""
                cells.append(f"t{event.get('tunnel', '?')}, {event['ms_lost']:,}{note}")
        rows.append(cells)
    return headers, rows


def _table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def markdown(doc: dict[str, Any]) -> str:
    """The report as markdown: the summary table, the events, how it was counted, the anomalies."""
    plan = doc["plan"]
    life = doc["lifetimes"]
    head = (f"Soak of {plan['duration_s']:g} s (seed {plan['seed']}), `ping -i {doc['interval_s']:g}` for the whole run; "
            f"ms lost = lost pings x measured spacing; a loss belongs to the event it follows (from its start to "
            f"30 s after the endpoint's return, cut at the next event), else it is {OUTSIDE}. Goal: under "
            f"{GOAL_OUTSIDE_SHARE * 100:g} % of pings lost {OUTSIDE}. Space side lifetimes: IKE {life['space']['ike_s']} s, "
            f"CHILD {life['space']['child_s']} s (rekeyed at {life['space']['child_rekey_s']} s). "
            f"Generated {doc['generated_at']} in {doc['wall_s']:.0f} s.")
    headers, rows = event_rows(doc["systems"])
    parts = [_table(SUMMARY_HEADERS, summary_rows(doc["systems"])), head, "", _table(headers, rows)]
    parts += [f"- {note}" for note in doc["notes"]]
    for name, rec in doc["systems"].items():
        found = rec.get("anomalies") or {}
        for item in found.get("lines", [])[:20]:
            parts.append(f"- {NAMES.get(name, name)} anomaly at {item['t_s']:.1f} s ({item['where']}): "
                         f"{item['level']} {item['line'][:200]}")
    return "\n".join(parts).rstrip() + "\n"
