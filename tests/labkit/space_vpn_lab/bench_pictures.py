"""Pictures of the benchmarks, written beside their JSON and markdown: per (mode, scenario)
one horizontal timeline per run, the agent above plain strongSwan on one time axis, with
the replies as a thin green band, the runs of lost pings in red, the maintenance as dashed
lines and the agent's failovers as triangles. matplotlib is imported only to draw, so
importing the lab kit stays fast; a record without a per-ping timeline is drawn as "no data".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

SYSTEM_NAMES = {"agent": "agent", "strongswan": "plain strongSwan"}
TRAFFIC_STOPPED = "traffic stopped"  # the band's end shows it
RESTORED = "redundancy restored"
LABEL_CHARS = 42
# Fixed size and resolution: the same records always give the same bytes.
WIDTH_IN, ROW_IN, HEADER_IN, FOOTER_IN, DPI = 11.0, 1.35, 0.5, 0.8, 100
LABEL_GAP_PX = 6  # least room between two labels side by side
LABEL_OFFSET_PT = 3  # a label from its line
LEVELS = (0.96, 0.83, 0.70, 0.57)  # label lines in a row, from its top (axes fraction)
BAND_Y, BAND_H, LOST_H, FAILOVER_Y = 0.22, 0.10, 0.26, 0.44


class MarkKind(Enum):
    EVENT = "event"  # the maintenance, or a milestone of the run
    RESTORED = "restored"
    FAILOVER = "failover"


@dataclass(frozen=True)
class Mark:
    t_s: float
    label: str
    kind: MarkKind = MarkKind.EVENT


@dataclass(frozen=True)
class Row:
    """One run's timeline in seconds from its t0; no_data says why there is none."""

    label: str
    received: tuple[tuple[float, float], ...] = ()
    lost: tuple[tuple[float, float], ...] = ()
    marks: tuple[Mark, ...] = ()
    no_data: str | None = None


def received_spans(window: Sequence[float] | None, gaps: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    """The stretches with replies: the window from the first to the last reply, less the
    gaps inside it (those before the first or after the last reply lie outside)."""
    if not window:
        return []
    first, last = window
    spans, start = [], first
    for after, before, _lost in sorted(tuple(gap) for gap in gaps):
        if first <= after and before <= last:
            spans.append((start, after))
            start = before
    spans.append((start, last))
    return spans


def short_label(event: str) -> str:
    """An event as a line or two on the picture: no parenthesised detail, one step a line."""
    lines = [re.sub(r"\s*\([^)]*\)", "", step).strip() for step in event.split("; ")]
    return "\n".join(line if len(line) <= LABEL_CHARS else line[:LABEL_CHARS - 1].rstrip() + "…" for line in lines)


def _row_name(run: dict[str, Any], numbered: bool) -> str:
    name = SYSTEM_NAMES.get(run.get("system", ""), str(run.get("system")))
    return f"{name} #{run.get('attempt', 1)}" if numbered else name


def _no_data(run: dict[str, Any]) -> str | None:
    if run.get("error"):
        return "no data: " + run["error"].splitlines()[0][:90]
    if "ping_gaps" not in run:
        return "no data: no per-ping timeline in this record"
    return None


def _timeline_row(run: dict[str, Any], name: str, marks: list[Mark]) -> Row:
    ms = run.get("ms_lost")
    reason = _no_data(run)
    label = f"{name}\n{ms:,} ms lost" if isinstance(ms, int) and not run.get("error") else name
    if reason:
        return Row(label, no_data=reason)
    gaps = run["ping_gaps"]
    return Row(label, received=tuple(received_spans(run.get("ping_window"), gaps)),
               lost=tuple((after, before) for after, before, _lost in gaps), marks=tuple(marks))


def bench_row(run: dict[str, Any], numbered: bool = False) -> Row:
    """A `bench` run: its events (seconds from the first ping) and the agent's failovers."""
    marks = [Mark(e["t_s"], RESTORED if e["event"] == RESTORED else short_label(e["event"]),
                  MarkKind.RESTORED if e["event"] == RESTORED else MarkKind.EVENT)
             for e in run.get("events") or [] if not e["event"].startswith(TRAFFIC_STOPPED)]
    t0 = run.get("t0_unix")
    for failover in run.get("failovers") or [] if t0 is not None else []:
        t_s = round(failover["at"] - t0, 3)
        if t_s >= 0:  # one at start-up is not the scenario's
            marks.append(Mark(t_s, f"failover {failover['from_tunnel']}→{failover['to_tunnel']} ({failover['kind']})",
                              MarkKind.FAILOVER))
    return _timeline_row(run, _row_name(run, numbered), marks)


def ha_row(run: dict[str, Any], numbered: bool = False) -> Row:
    """A `bench-ha` run, seconds from the power-off: the VRRP takeover and the new master's CHILD_SA."""
    marks = [Mark(0.0, "master powered off")]
    for key, label in (("vrrp_takeover_ms", "VRRP takeover"), ("child_up_ms", "CHILD_SA up")):
        if run.get(key) is not None:
            marks.append(Mark(run[key] / 1000, label))
    return _timeline_row(run, _row_name(run, numbered), marks)


def ordered(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agent's runs above plain strongSwan's, each in attempt order."""
    return sorted(runs, key=lambda r: (r.get("system") != "agent", r.get("system", ""), r.get("attempt", 1)))


def _numbered(runs: list[dict[str, Any]]) -> bool:
    return len({r.get("system") for r in runs}) < len(runs)


def write_bench_pictures(runs: Iterable[dict[str, Any]], out_dir: Path) -> list[Path]:
    """bench-<mode>-<scenario>.png in out_dir for every (mode, scenario) of the runs."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["mode"], run["scenario"]), []).append(run)
    paths = []
    for (mode, scenario), group in groups.items():
        group = ordered(group)
        numbered = _numbered(group)
        interval_ms = group[0].get("interval_s", 0) * 1000
        title = f"{scenario} {group[0].get('scenario_name', '')}, {mode} mode (ping every {interval_ms:g} ms)"
        path = out_dir / f"bench-{mode}-{scenario}.png"
        draw([bench_row(r, numbered) for r in group], title, "seconds from the first ping", path, "maintenance")
        paths.append(path)
    return paths


def write_ha_picture(runs: Sequence[dict[str, Any]], path: Path) -> Path:
    """One picture of every bench-ha run, the power-off at t=0."""
    group = ordered(runs)
    first = group[0] if group else {}
    title = (f"HA pair, master power-off (VRRP advert {first.get('advert_int_s', 0):g} s, "
             f"ping every {first.get('interval_s', 0) * 1000:g} ms)")
    draw([ha_row(r, _numbered(group)) for r in group], title, "seconds from the master's power-off", path,
         "power-off, takeover, CHILD_SA")
    return path


def x_range(rows: Sequence[Row]) -> tuple[float, float]:
    """From the earliest to the latest thing drawn, 0 included, with a little margin."""
    times = [0.0] + [t for row in rows for span in row.received + row.lost for t in span]
    times += [m.t_s for row in rows for m in row.marks]
    low, high = min(times), max(max(times), 1.0)
    pad = (high - low) * 0.02
    return low - pad, high + pad


# --- drawing ------------------------------------------------------------------------------------

GREEN, RED = "#2e9e44", "#d62728"
MARK_STYLES: dict[MarkKind, tuple[str, Any]] = {  # colour, line style
    MarkKind.EVENT: ("#4d4d4d", (0, (4, 3))), MarkKind.RESTORED: ("#1f5fbf", (0, (1, 2))),
    MarkKind.FAILOVER: ("#7b2cbf", "-")}
SAME_LABEL_SPAN = 0.02  # of the axis: a label a row above already says it


def draw(rows: Sequence[Row], title: str, xlabel: str, path: Path, events_are: str) -> None:
    """One PNG: a row per run on a shared time axis, a legend below (`events_are` names
    the dashed lines)."""
    # Figure + the Agg canvas directly: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = HEADER_IN + ROW_IN * max(len(rows), 1) + FOOTER_IN
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.16, right=0.98, top=1 - HEADER_IN / height, bottom=FOOTER_IN / height, hspace=0.1)
    axes = fig.subplots(max(len(rows), 1), 1, sharex=True, squeeze=False)[:, 0]
    low, high = x_range(rows)
    renderer = canvas.get_renderer()
    said: list[Mark] = []
    for ax, row in zip(axes, rows):
        _frame(ax, row.label, low, high)
        if row.no_data:
            ax.text(0.5, 0.5, row.no_data, transform=ax.transAxes, ha="center", va="center", color="#777777",
                    fontsize=9)
            continue
        ax.broken_barh([(a, b - a) for a, b in row.received], (BAND_Y - BAND_H / 2, BAND_H), facecolor=GREEN,
                       edgecolor=GREEN, linewidth=0.5)
        # The edge keeps a loss of a few ms at least a pixel wide.
        ax.broken_barh([(a, b - a) for a, b in row.lost], (BAND_Y - LOST_H / 2, LOST_H), facecolor=RED,
                       edgecolor=RED, linewidth=1.0)
        labels = []
        for mark in sorted(row.marks, key=lambda m: m.t_s):
            _draw_mark(ax, mark)
            if mark.kind is MarkKind.FAILOVER or not any(
                    m.label == mark.label and abs(m.t_s - mark.t_s) <= SAME_LABEL_SPAN * (high - low) for m in said):
                labels.append(mark)
                said.append(mark)
        _place_labels(ax, labels, renderer)
    if not rows:
        _frame(axes[0], "", low, high)
        axes[0].text(0.5, 0.5, "no runs", transform=axes[0].transAxes, ha="center", va="center", color="#777777")
    axes[-1].set_xlabel(xlabel, fontsize=10)
    fig.suptitle(title, fontsize=12)
    kinds = {m.kind for row in rows if not row.no_data for m in row.marks}
    fig.legend(handles=_legend_handles(kinds, events_are), loc="lower center", ncol=5, frameon=False, fontsize=9)
    fig.savefig(path, format="png", metadata={"Software": None})


def _frame(ax: Any, label: str, low: float, high: float) -> None:
    ax.set_xlim(low, high)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    ax.grid(axis="x", color="#e4e4e4", linewidth=0.6)
    ax.set_axisbelow(True)


def _draw_mark(ax: Any, mark: Mark) -> None:
    color, style = MARK_STYLES[mark.kind]
    if mark.kind is MarkKind.FAILOVER:
        ax.plot([mark.t_s, mark.t_s], [BAND_Y - LOST_H / 2, FAILOVER_Y], color=color, linewidth=1.2)
        ax.plot([mark.t_s], [FAILOVER_Y], marker="v", markersize=8, color=color)
    else:
        ax.axvline(mark.t_s, color=color, linestyle=style, linewidth=1.0)


def _place_labels(ax: Any, marks: Sequence[Mark], renderer: Any) -> None:
    """Each label on the first line of the row where it overlaps none placed before; a
    label that would run off the right edge goes left of its line. Failover labels start
    next to their triangle, the others at the top."""
    right = ax.get_window_extent(renderer).x1
    placed: list[Any] = []
    for mark in marks:
        color = MARK_STYLES[mark.kind][0]
        levels = LEVELS[::-1] if mark.kind is MarkKind.FAILOVER else LEVELS
        text = ax.annotate(mark.label, (mark.t_s, levels[0]), xycoords=ax.get_xaxis_transform(),
                           xytext=(LABEL_OFFSET_PT, 0), textcoords="offset points", ha="left", va="top",
                           fontsize=8, color=color,
                           bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5})
        if text.get_window_extent(renderer).x1 > right:
            text.set_horizontalalignment("right")
            text.set_position((-LABEL_OFFSET_PT, 0))
        for level in levels:
            text.xy = (mark.t_s, level)
            box = text.get_window_extent(renderer)
            if not any(_too_close(box, other) for other in placed):
                break
        placed.append(box)


def _too_close(a: Any, b: Any) -> bool:
    """Two labels' boxes (pixels) overlap, or stand closer side by side than LABEL_GAP_PX."""
    return (a.x0 < b.x1 + LABEL_GAP_PX and b.x0 < a.x1 + LABEL_GAP_PX
            and a.y0 < b.y1 and b.y0 < a.y1)


def _legend_handles(kinds: set[MarkKind], events_are: str) -> list[Any]:
    """The band, the losses, and the kinds of mark the picture shows."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=GREEN, label="replies"), Patch(color=RED, label="pings lost")]
    for kind, label in ((MarkKind.EVENT, events_are), (MarkKind.RESTORED, RESTORED)):
        if kind in kinds:
            color, style = MARK_STYLES[kind]
            handles.append(Line2D([], [], color=color, linestyle=style, label=label))
    if MarkKind.FAILOVER in kinds:
        handles.append(Line2D([], [], color=MARK_STYLES[MarkKind.FAILOVER][0], marker="v", linestyle="none",
                              label="agent failover"))
    return handles
