"""`space-vpn-lab bench-ha`: a gateway pair under real keepalived loses its master. Each
system (plain strongSwan like the article on both nodes, or one agent per node with
`ha: {enabled: true}`) runs in a fresh HA lab: the LAN host pings the space host through
the LAN VIP, the master is powered off, and the run records the ms lost and where the
time went (VRRP takeover, IKE_SA and CHILD_SA up on the new master, first reply).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from space_vpn_lab.bench import keep_logs, lab_prefix, parse_choice
from space_vpn_lab.bench_pictures import write_ha_picture
from space_vpn_lab.bench_report import format_markdown, format_table, ms_lost, packet_spacing, ping_count, utc_iso
from space_vpn_lab.bench_timeline import TimedPinger
from space_vpn_lab.ha_lab import HaLab, NodeSoftware
from space_vpn_lab.ha_report import (CHILD_UP, HA_HEADERS, IKE_UP, build_row, established_ms, gap_figures, notes,
                                     report_document, retrying_s, takeover_ms)
from space_vpn_lab.ha_systems import AgentPair, PlainStrongswanPair
from space_vpn_lab.ha_topology import LAN_HOST_IP
from space_vpn_lab.keepalived import VrrpSettings
from space_vpn_lab.topology import SPACE_HOST_IP

log = logging.getLogger(__name__)

PREFIX = "svh"
HA_SYSTEMS = ("strongswan", "agent")
LEAD_S = 1.0  # traffic before the power-off
TAIL_S = 2.0  # traffic after the first reply, to see it stay
UP_TIMEOUT_S = 60.0
DEFAULT_CAP_S = 90.0
DEFAULT_SETTLE_S = 10.0
DEFAULT_JSON = Path("bench-results/bench-ha.json")
POLL_S = 0.05


def software_factory(system: str) -> Callable[[HaLab], NodeSoftware]:
    """The node software of `system` for a new HA lab."""
    if system == "strongswan":
        return PlainStrongswanPair
    if system == "agent":
        token = "HRKU-bench-" + secrets.token_hex(16)
        return lambda lab: AgentPair(lab, token)
    raise ValueError(f"unknown HA system {system!r}")


def new_record(system: str, interval_s: float, advert_int_s: float, settle_s: float, cap_s: float) -> dict[str, Any]:
    return {"system": system, "scenario": "master power-off", "interval_s": interval_s, "advert_int_s": advert_int_s,
            "settle_s": settle_s, "cap_s": cap_s, "sent": None, "received": None, "lost": None, "ms_lost": None,
            "error": None, "started_at": utc_iso(time.time())}


def measure_power_off(lab: HaLab, workdir: Path, interval_s: float, cap_s: float) -> dict[str, Any]:
    """Ping through the LAN VIP, power the master off, wait for replies to come back
    (or the cap), keep pinging TAIL_S more; the figures of the run and its per-ping
    timeline (ping_window, ping_gaps: seconds from the power-off)."""
    masters = lab.masters()
    if len(masters) != 1:
        raise RuntimeError(f"expected one master before the power-off, found {masters}")
    old, new = masters[0], lab.other(masters[0])
    count = ping_count(LEAD_S + cap_s + TAIL_S + 5, interval_s)
    pinger = TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, count, interval_s, workdir / "ping.out")
    began = time.monotonic()
    with pinger:
        time.sleep(LEAD_S)
        t0 = lab.power_off(old)
        deadline = time.monotonic() + cap_s
        back_at = None
        while back_at is None and time.monotonic() < deadline:
            if gap_figures(pinger.replies(), t0)["first_reply_ms"] is not None and _steady(pinger.replies(), t0):
                back_at = time.monotonic()
            time.sleep(POLL_S)
        time.sleep(TAIL_S)
        result = pinger.stop()
        elapsed = time.monotonic() - began
    spacing = packet_spacing(elapsed, result.transmitted, interval_s)
    charon_log = lab.gateways[new].charon.log_path.read_text(errors="replace")
    return {"old_master": old, "new_master": new, "t0_unix": t0, "sent": result.transmitted,
            "received": result.received, "lost": result.lost, "spacing_ms": round(spacing * 1000, 2),
            "ms_lost": ms_lost(result.lost, spacing), "ping_s": round(elapsed, 2),
            "vrrp_takeover_ms": takeover_ms(lab.gateways[new].keepalived.events(), t0),
            "ike_up_ms": established_ms(charon_log, IKE_UP, t0), "child_up_ms": established_ms(charon_log, CHILD_UP, t0),
            "backup_retrying_s": retrying_s(charon_log, t0),
            **gap_figures(pinger.replies(), t0), **pinger.timeline(t0)}


def _steady(replies: list[float], t0: float, need: int = 5) -> bool:
    """A few replies after t0: traffic is back, not one straggler."""
    return sum(r > t0 for r in replies) >= need


def run_one(system: str, workroot: Path, *, interval_s: float, advert_int_s: float, settle_s: float, cap_s: float,
            attempt: int = 1, log_dir: Path | None = None) -> dict[str, Any]:
    """One run in a fresh HA lab; a failure becomes record["error"], never an exception."""
    record = new_record(system, interval_s, advert_int_s, settle_s, cap_s)
    record["attempt"] = attempt
    workdir = workroot / (f"ha-{system}" + (f"-{attempt}" if attempt > 1 else ""))
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    began = time.monotonic()
    try:
        with HaLab(workdir / "lab", software_factory(system), prefix=lab_prefix(PREFIX),
                   vrrp=VrrpSettings(advert_int_s=advert_int_s)) as lab:
            try:
                lab.wait_for(lab.software.ready, UP_TIMEOUT_S, f"{system} pair ready")
                time.sleep(settle_s)
                record.update(measure_power_off(lab, workdir, interval_s, cap_s))
            finally:
                record["details"] = lab.software.details()
    except Exception as e:  # noqa: BLE001 - recorded; the next run goes on
        log.warning("bench-ha %s failed: %s", system, e)
        record["error"] = f"{type(e).__name__}: {e}"[-600:]
    record["seconds"] = round(time.monotonic() - began, 1)
    if log_dir is not None:
        keep_logs(workdir, log_dir / workdir.name)
    return record


def run_bench_ha(workroot: Path, *, systems: str | None, interval: float, advert_int: float, settle_s: float,
                 cap_s: float, repeat: int, json_path: Path | None) -> int:
    """The `space-vpn-lab bench-ha` command: runs, prints the table, writes JSON, markdown
    and a picture of every run."""
    try:
        chosen = parse_choice(systems or ",".join(HA_SYSTEMS), HA_SYSTEMS, "--systems")
        VrrpSettings(advert_int_s=advert_int)
    except ValueError as e:
        print(f"bench-ha: {e}", file=sys.stderr)
        return 2
    if interval < 0.005 or repeat < 1 or cap_s <= 0 or settle_s < 0:
        print("bench-ha: --interval >= 0.005, --repeat >= 1, --cap > 0 and --settle >= 0 please", file=sys.stderr)
        return 2
    json_path = json_path or DEFAULT_JSON
    out_dir = json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = []
    for attempt in range(1, repeat + 1):
        for system in chosen:
            print(f"bench-ha: {system} master power-off ...", flush=True)
            runs.append(run_one(system, workroot, interval_s=interval, advert_int_s=advert_int, settle_s=settle_s,
                                cap_s=cap_s, attempt=attempt, log_dir=out_dir / "logs-ha"))
    text_notes = notes(runs, interval, advert_int)
    document = report_document(runs, interval_s=interval, advert_int_s=advert_int, started=started,
                               finished=time.time(), notes_=text_notes)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    rows = [build_row(r) for r in runs]
    markdown_path = json_path.with_suffix(".md")
    markdown_path.write_text(format_markdown(rows, text_notes, HA_HEADERS))
    print()
    print(format_table(rows, HA_HEADERS), end="")
    for note in text_notes:
        print(f"note: {note}")
    picture = write_ha_picture(runs, json_path.with_suffix(".png"))  # after the figures are safe
    print(f"\nJSON: {json_path}  markdown: {markdown_path}  picture: {picture}")
    return 1 if any(r.get("error") for r in runs) else 0
