"""`space-vpn-lab bench`: failover benchmark of the agent against plain strongSwan configured
like Heroku's article, each (mode, scenario, system) in a fresh lab. Figures per run: ms of
traffic lost (lost pings x interval) and seconds from the end of the maintenance until
the redundant state is back (None: not within the cap). Policy mode runs in the host lab
(userspace ESP); route mode inside the kernel VM (bench_kernel).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from space_vpn_lab import kernel_vm
from space_vpn_lab.bench_pictures import write_bench_pictures
from space_vpn_lab.bench_report import (
    BASELINE_DATA_PATH,
    HEADERS,
    IKE_VERSION,
    REDUNDANCY_CAP_S,
    api_change_note,
    build_row,
    format_markdown,
    format_table,
    markdown_notes,
    ms_lost,
    packet_spacing,
    ping_count,
    report_document,
    restored_cell,
    summarize_repeats,
    utc_iso,
)
from space_vpn_lab.bench_scenarios import (
    LEAD_S,
    SCENARIOS,
    ScenarioSpec,
    Timeline,
    telemetry,
    drain,
    graceful,
    silent,
)
from space_vpn_lab.bench_systems import (
    INITIATE_TIMEOUT_MS,
    POLL_S,
    PROBE,
    SYSTEM_CLASSES,
    SYSTEMS,
    AgentSystem,
    BenchError,
    SeedSystem,
    safe_poll,
    sa_ids,
    seed_conn,
    seed_name,
    space_redundant,
)
from space_vpn_lab.bench_timeline import TimedPinger, describe, read_after_delete, traffic_back_s
from space_vpn_lab.lab import Lab
from space_vpn_lab.topology import CUSTOMER_HOST_IP, SPACE_HOST_IP
from space_vpn_lab.traffic import Pinger

# Names the CLI, bench_kernel and the tests reach through this module.
__all__ = [
    "BASELINE_DATA_PATH", "DEFAULT_JSON", "HEADERS", "IKE_VERSION", "INITIATE_TIMEOUT_MS", "LEAD_S",
    "MIN_INTERVAL_S", "MODES", "POLL_S", "PREFIX", "PROBE", "REDUNDANCY_CAP_S",
    "SCENARIOS", "SYSTEMS", "SYSTEM_CLASSES", "VM_BOOT_S", "VM_PER_RUN_S", "api_change_note",
    "AgentSystem", "BenchError", "ScenarioSpec", "SeedSystem", "Timeline",
    "telemetry", "build_row", "drain", "format_markdown", "format_table", "graceful", "iter_runs",
    "keep_logs", "lab_details", "lab_prefix", "markdown_notes", "measure", "ms_lost", "new_record", "packet_spacing",
    "parse_choice", "ping_count", "report_document", "restored_cell", "route_runs", "run_bench",
    "run_one", "seed_conn", "seed_name", "silent", "space_redundant",
]

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.005
PREFIX = "svb"


def lab_prefix(default: str) -> str:
    """SPACE_VPN_LAB_PREFIX, as for the lab tests: two checkouts can bench side by side
    (a lab first removes the namespaces of its prefix)."""
    return os.environ.get("SPACE_VPN_LAB_PREFIX") or default
MODES = ("policy", "route")
DEFAULT_JSON = Path("bench-results/bench.json")


def parse_choice(text: str | None, allowed: tuple[str, ...], what: str) -> list[str]:
    """"a,c" -> ["a", "c"] in the order given; raises ValueError on an unknown item."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise ValueError(f"{what}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return list(dict.fromkeys(items))


# --- runner ------------------------------------------------------------------------------------

def new_record(mode: str, spec: ScenarioSpec, system: str, interval_s: float) -> dict[str, Any]:
    return {"mode": mode, "scenario": spec.key, "scenario_name": spec.name, "system": system,
            "interval_s": interval_s, "traffic_s": spec.traffic_s, "sent": None, "received": None,
            "lost": None, "ms_lost": None, "restore_s": None, "restore_cap_s": REDUNDANCY_CAP_S,
            "active_tunnel": None, "events": [], "error": None, "started_at": utc_iso(time.time())}


def measure(lab: Lab, system: Any, spec: ScenarioSpec, interval_s: float,
            workdir: Path | None = None) -> dict[str, Any]:
    """Ping for the scenario's window while it runs, and wait (traffic still flowing
    inside the window) until redundancy is back or the cap passes. With a workdir the
    record keeps the per-ping timeline (ping_window, ping_gaps) for the pictures; API
    changes (e-g) also keep the customer charon's SA ids before and after."""
    active = system.active_tunnel()
    if lab.space.route_based:
        lab.space.answer_via(active)  # the favourable case: AWS answers over the carrying tunnel
    # Count is only a bound: the window is timed, since ping often sends slower than -i.
    args = (lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, ping_count(spec.traffic_s * 3, interval_s),
            interval_s)
    timed = workdir is not None
    pinger = TimedPinger(*args, output=workdir / "ping.out") if timed else Pinger(*args)
    extra: dict[str, Any] = {}
    if spec.api_change:
        extra["sas_before"] = sa_ids(lab)
    began = time.monotonic()
    with pinger:
        run = Timeline(lab, system, active)
        spec.driver(run)
        result, ping_s, restore_s = None, 0.0, None
        deadline = run.restore_at + REDUNDANCY_CAP_S
        while result is None or (restore_s is None and time.monotonic() < deadline):
            now = time.monotonic()
            if result is None and now >= run.t0 + spec.traffic_s:
                result, ping_s = pinger.stop(), time.monotonic() - began
                run.mark(f"traffic stopped: {result.received}/{result.transmitted} replies")
            if restore_s is None and safe_poll(system.redundant) and safe_poll(lambda: space_redundant(lab)):
                restore_s = round(now - run.restore_at, 2)
                run.mark("redundancy restored")
            time.sleep(POLL_S)
    if spec.api_change:
        extra["sas_after"] = sa_ids(lab)
        extra.update(system.after_window(spec.key))
        extra["follows_api"] = system.follows_api
    if timed:
        extra.update(pinger.timeline(run.t0_unix))
    if timed and run.answer_unix is not None:
        extra["traffic_back_s"] = traffic_back_s(pinger.replies(), run.answer_unix)
        extra["traffic_back_window_s"] = round(run.t0_unix + spec.traffic_s - run.answer_unix, 1)
    spacing = packet_spacing(ping_s, result.transmitted, interval_s)
    return {**extra, "active_tunnel": active, "events": run.events, "t0_unix": run.t0_unix, "sent": result.transmitted,
            "received": result.received, "lost": result.lost, "ping_s": round(ping_s, 2),
            "spacing_ms": round(spacing * 1000, 2), "ms_lost": ms_lost(result.lost, spacing),
            "ms_lost_nominal": ms_lost(result.lost, interval_s), "restore_s": restore_s}


def run_one(mode: str, spec: ScenarioSpec, system_name: str, interval_s: float, workroot: Path,
            lab_options: dict[str, Any], up_timeout: float, log_dir: Path | None, attempt: int = 1,
            probe: str = "icmp", ike_version: int = IKE_VERSION) -> dict[str, Any]:
    """One run in a fresh lab; any failure becomes record["error"], never an exception."""
    record = new_record(mode, spec, system_name, interval_s)
    record.update(attempt=attempt, probe=probe, ike_version=ike_version)
    workdir = workroot / (f"{mode}-{spec.key}-{system_name}" + (f"-{attempt}" if attempt > 1 else ""))
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            lab = stack.enter_context(Lab(workdir / "lab", prefix=lab_prefix(PREFIX), ike_version=ike_version, **lab_options))
            record["lab"] = lab_details(lab, mode)
            system = SYSTEM_CLASSES[system_name](lab, workdir, stack, mode, probe=probe)
            try:
                system.start(up_timeout)
                record.update(measure(lab, system, spec, interval_s, workdir))
            finally:
                record.update(system.details())
        if spec.key == "b":  # the DELETE's path through both charons and the agent
            record["after_delete"] = read_after_delete(workdir, record["t0_unix"] + LEAD_S - 0.5)
    except Exception as e:  # noqa: BLE001 - recorded; the next run goes on
        log.warning("bench %s/%s/%s failed: %s", mode, spec.name, system_name, e)
        record["error"] = f"{type(e).__name__}: {e}"[-600:]
    record["seconds"] = round(time.monotonic() - began, 1)
    if log_dir is not None:
        keep_logs(workdir, log_dir / workdir.name)
    return record


def lab_details(lab: Lab, mode: str) -> dict[str, Any]:
    with lab.customer_charon.connected() as session:
        version = session.version()
    return {"kernel": os.uname().release, "ike_version": lab.ike_version, "mode": mode,
            "charon": f"{_text(version.get('daemon'))} {_text(version.get('version'))}",
            "esp": "kernel (kernel-netlink)" if lab.kernel_ipsec else "userspace (kernel-libipsec)",
            "space_route_based": lab.space.route_based}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def keep_logs(workdir: Path, dest: Path) -> None:
    """charon and agent logs for post-mortems (no keys in them)."""
    logs = list(workdir.rglob("*.log"))
    if logs:
        dest.mkdir(parents=True, exist_ok=True)
        for path in logs:
            shutil.copyfile(path, dest / path.name)


def iter_runs(mode: str, scenarios: list[str], systems: list[str], interval_s: float, workroot: Path, *,
              lab_options: dict[str, Any], up_timeout: float, log_dir: Path | None,
              repeat: int = 1, probe: str = "icmp", ike_version: int = IKE_VERSION) -> Iterator[dict[str, Any]]:
    for key in scenarios:
        for attempt in range(1, repeat + 1):
            for system_name in systems:
                print(f"bench: {mode} {key} {SCENARIOS[key].name} {system_name} ...", flush=True)
                yield run_one(mode, SCENARIOS[key], system_name, interval_s, workroot, lab_options, up_timeout,
                              log_dir, attempt, probe, ike_version)


# --- host entry point ------------------------------------------------------------------------------

VM_BOOT_S = 120.0
VM_PER_RUN_S = 240.0


def route_runs(scenarios: list[str], interval_s: float, results_dir: Path,
               repeat: int = 1, probe: str = "icmp", ike_version: int = IKE_VERSION) -> tuple[list[dict], list[str]]:
    """Route mode in the kernel VM (bench_kernel); a VM failure becomes notes, not a crash."""
    reason = kernel_vm.vng_available()
    if reason:
        return [], [f"route mode skipped: {reason}"]
    args = ["--scenarios", ",".join(scenarios), "--interval", repr(interval_s), "--repeat", str(repeat),
            "--probe", probe, "--ike-version", str(ike_version)]
    timeout = VM_BOOT_S + VM_PER_RUN_S * len(scenarios) * len(SYSTEMS) * repeat
    try:
        results = kernel_vm.run_in_vm("space_vpn_lab.bench_kernel", args, results_dir, timeout)
        notes = []
    except kernel_vm.KernelVmError as e:
        results = e.results or {}
        notes = [f"route mode: kernel VM failed: {str(e).splitlines()[0]}"]
    runs = results.get("runs", [])
    if results and not results.get("complete"):
        notes.append("route mode: the VM stopped before all runs finished")
    return runs, notes


def run_bench(workroot: Path, *, modes: str | None, scenarios: str | None, json_path: Path | None,
              interval: float, repeat: int = 1, probe: str = "icmp", ike_version: int = IKE_VERSION) -> int:
    """The `space-vpn-lab bench` command: runs, prints the table, writes JSON, markdown and
    a picture per (mode, scenario)."""
    if interval < MIN_INTERVAL_S:
        print(f"bench: --interval must be at least {MIN_INTERVAL_S} s", file=sys.stderr)
        return 2
    if repeat < 1:
        print(f"bench: --repeat must be at least 1, got {repeat}", file=sys.stderr)
        return 2
    notes: list[str] = []
    if modes is None:
        reason = kernel_vm.vng_available()
        modes = "policy" if reason else "policy,route"
        if reason:
            notes.append(f"route mode not run: {reason}")
            print(f"bench: note: {notes[-1]}", flush=True)
    try:
        chosen_modes = parse_choice(modes, MODES, "--modes")
        chosen = parse_choice(scenarios or ",".join(SCENARIOS), tuple(SCENARIOS), "--scenarios")
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    json_path = json_path or DEFAULT_JSON
    out_dir = json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs: list[dict[str, Any]] = []
    if "policy" in chosen_modes:
        runs += list(iter_runs("policy", chosen, list(SYSTEMS), interval, workroot, lab_options={},
                               up_timeout=60.0, log_dir=out_dir / "logs", repeat=repeat, probe=probe,
                               ike_version=ike_version))
    if "route" in chosen_modes:
        print(f"bench: route mode in the kernel VM ({','.join(chosen)}), this takes minutes ...", flush=True)
        vm_runs, vm_notes = route_runs(chosen, interval, out_dir / "vm", repeat, probe, ike_version)
        runs += vm_runs
        notes += vm_notes
    notes += summarize_repeats(runs) + [text for run in runs if (text := describe(run) or api_change_note(run))]
    notes.insert(0, f"agent probe: {probe}; IKEv{ike_version}")
    document = report_document(runs, interval_s=interval, started=started, finished=time.time(), notes=notes,
                               ike_version=ike_version)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    rows = [build_row(r) for r in runs]
    (out_dir / "bench.md").write_text(format_markdown(rows, markdown_notes(document)))
    print()
    print(format_table(rows), end="")
    for note in notes:
        print(f"note: {note}")
    pictures = write_bench_pictures(runs, out_dir)  # after the figures are safe in JSON and markdown
    print(f"\nJSON: {json_path}  markdown: {out_dir / 'bench.md'}")
    for path in pictures:
        print(f"picture: {path}")
    return 1 if any(r.get("error") for r in runs) else 0
