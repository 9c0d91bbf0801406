"""Pure parts of the failover benchmark: ms-lost arithmetic, the table row of a run, the
plain-text table, the markdown for the README and the JSON document. No side effects: the
caller measures, this module only turns figures into text and data.
"""

from __future__ import annotations

import datetime
import math
import statistics
from typing import Any

IKE_VERSION = 1
REDUNDANCY_CAP_S = 60.0
#: What "plain strongSwan like the seed" means on each data path (recorded in the JSON).
BASELINE_DATA_PATH = {
    "policy": "seed conns vpn1+vpn2, both children up, userspace ESP (kernel-libipsec)",
    "route": "seed conns vpn1+vpn2 (policy-based, as the article), both children up, kernel ESP",
}


def ms_lost(lost: int, spacing_s: float) -> int:
    """Traffic lost in ms: lost pings x the time between two pings."""
    return round(lost * spacing_s * 1000)


def packet_spacing(elapsed_s: float, sent: int, interval_s: float) -> float:
    """Seconds between two pings as measured; iputils ping often sends slower than its
    -i (16 ms for -i 0.01 on the lab hosts), never faster, so the nominal is the floor."""
    if sent <= 0:
        return interval_s
    return max(interval_s, elapsed_s / sent)


def ping_count(traffic_s: float, interval_s: float) -> int:
    return max(1, math.ceil(traffic_s / interval_s))

def restored_cell(run: dict[str, Any]) -> str:
    if run.get("error"):
        return "error: " + run["error"].splitlines()[0][:60]
    if run.get("restore_s") is None:
        return f"never (> {run.get('restore_cap_s', REDUNDANCY_CAP_S):g} s)"
    return f"{run['restore_s']:.1f} s"


def traffic_back_cell(run: dict[str, Any]) -> str:
    """Re-creation (g): from the API's new active answer to the first ping answered."""
    if run.get("error"):
        return "error"
    if run.get("traffic_back_s") is None:
        if not run.get("follows_api", True):
            return "never (needs a human)"
        return f"never (> {run.get('traffic_back_window_s', 0):g} s)"
    return f"{run['traffic_back_s']:.2f} s"


def build_row(run: dict[str, Any]) -> dict[str, str]:
    """The table cells of one run; "traffic_back" only for runs that measure it."""
    lost = "error" if run.get("ms_lost") is None else str(run["ms_lost"])
    attempt = f" #{run['attempt']}" if run.get("attempt", 1) > 1 else ""
    row = {"mode": run["mode"], "scenario": f"{run['scenario']} {run['scenario_name']}{attempt}",
           "system": run["system"], "ms_lost": lost, "restored": restored_cell(run)}
    if "traffic_back_s" in run:
        row["traffic_back"] = traffic_back_cell(run)
    return row


HEADERS = {"mode": "mode", "scenario": "scenario", "system": "system", "ms_lost": "ms lost",
           "restored": "redundancy restored", "traffic_back": "traffic back after the new answer"}
#: Shown only when a row has it, so that the failover table stays as it was.
OPTIONAL_COLUMNS = ("traffic_back",)


def columns(rows: list[dict[str, str]], headers: dict[str, str] = HEADERS) -> list[str]:
    return [k for k in headers if k not in OPTIONAL_COLUMNS or any(k in r for r in rows)]


def sas_recreated(before: dict[str, str], after: dict[str, str]) -> tuple[int, int, int]:
    """(re-created, gone, total) of the SAs in `before` (name -> unique id): re-created
    when the name is there afterwards with another id, gone when it is not there at all."""
    recreated = sum(name in after and after[name] != uid for name, uid in before.items())
    gone = sum(name not in after for name in before)
    return recreated, gone, len(before)


def api_change_note(run: dict[str, Any]) -> str | None:
    """'policy f reordered agent: SAs re-created: 0/3' for a run that kept SA ids."""
    if run.get("error") or "sas_before" not in run or "sas_after" not in run:
        return None
    recreated, gone, total = sas_recreated(run["sas_before"], run["sas_after"])
    text = f"{run['mode']} {run['scenario']} {run['scenario_name']} {run['system']}: SAs re-created: {recreated}/{total}"
    if gone:
        text += f", gone: {gone}/{total}"
    if run.get("old_selectors_quick_mode"):
        text += f"; a new Quick Mode with its old selectors after the window: {run['old_selectors_quick_mode']}"
    return text


def format_table(rows: list[dict[str, str]], headers: dict[str, str] = HEADERS) -> str:
    """Plain text, columns padded; ms lost right-aligned. `headers`: column key -> title."""
    keys = columns(rows, headers)
    widths = {k: max([len(headers[k]), *(len(r.get(k, "-")) for r in rows)]) for k in keys}

    def line(cells: dict[str, str]) -> str:
        parts = [cells.get(k, "-").rjust(widths[k]) if k == "ms_lost" else cells.get(k, "-").ljust(widths[k])
                 for k in keys]
        return "  ".join(parts).rstrip()
    return "\n".join([line(headers), *(line(r) for r in rows)]) + "\n"


def format_markdown(rows: list[dict[str, str]], notes: list[str], headers: dict[str, str] = HEADERS) -> str:
    keys = columns(rows, headers)
    out = ["| " + " | ".join(headers[k] for k in keys) + " |",
           "|" + "|".join("---:" if k == "ms_lost" else "---" for k in keys) + "|"]
    out += ["| " + " | ".join(r.get(k, "-").replace("|", "/") for k in keys) + " |" for r in rows]
    # The first note is a paragraph (how it was counted), the others a list.
    head, *rest = notes or [""]
    text = "\n".join(out) + "\n" + (f"\n{head}\n" if head else "")
    return text + ("\n" + "".join(f"- {n}\n" for n in rest) if rest else "")


def markdown_notes(document: dict[str, Any]) -> list[str]:
    """What a reader of the pasted table needs: how ms lost was counted, and when."""
    spacings = [r["spacing_ms"] for r in document["runs"] if r.get("spacing_ms")]
    measured = f" (measured spacing {min(spacings):g}-{max(spacings):g} ms)" if spacings else ""
    head = (f"`ping -i {document['interval_s']:g}`{measured}; ms lost = lost pings x measured spacing. "
            f"IKEv{document['ike_version']}; generated {document['generated_at']} by `space-vpn-lab bench` "
            f"in {document['duration_s']:.0f} s.")
    return [head, *document["notes"]]


def report_document(runs: list[dict[str, Any]], *, interval_s: float, started: float, finished: float,
                    notes: list[str], ike_version: int = IKE_VERSION) -> dict[str, Any]:
    """The JSON written next to the table: every raw figure of every run."""
    return {"schema": 1, "generated_at": utc_iso(finished), "started_at": utc_iso(started),
            "duration_s": round(finished - started, 1), "interval_s": interval_s,
            "ike_version": ike_version, "redundancy_cap_s": REDUNDANCY_CAP_S,
            "baseline": BASELINE_DATA_PATH, "notes": notes, "runs": runs}


def summarize_repeats(runs: list[dict[str, Any]]) -> list[str]:
    """'route b graceful agent: ms lost median 13 (11-22) over 5 runs' for every
    (mode, scenario, system) that ran more than once."""
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for run in runs:
        if run.get("ms_lost") is not None:
            key = (run["mode"], run["scenario"], run["scenario_name"], run["system"])
            groups.setdefault(key, []).append(run["ms_lost"])
    return [f"{mode} {scenario} {name} {system}: ms lost median {statistics.median(lost):g} "
            f"({min(lost)}-{max(lost)}) over {len(lost)} runs"
            for (mode, scenario, name, system), lost in groups.items() if len(lost) > 1]


def utc_iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat(timespec="seconds")
