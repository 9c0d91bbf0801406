"""`space-vpn-lab soak`: hours of maintenance events and rekeys with a ping every 10 ms,
for the agent and for plain strongSwan configured like Heroku's article, one fresh lab
each, one after the other with the same seeded schedule (one lab prefix, and neither run
takes CPU from the other's figures). Both ends rekey often (the space side always; the
agent has no lifetime setting and keeps its own). Writes JSON, markdown and a picture.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.core import desired
from space_vpn_lab.bench import keep_logs, lab_details, lab_prefix
from space_vpn_lab.bench_pictures import Mark, MarkKind, Row, draw, received_spans
from space_vpn_lab.bench_systems import AgentSystem, SeedSystem, safe_poll
from space_vpn_lab.lab import Lab
from space_vpn_lab.soak_document import document, event_spans, losses, markdown, resources
from space_vpn_lab.soak_plan import Kind, Plan, PlannedEvent, Role, plan_soak
from space_vpn_lab.soak_probes import SEGMENT_S, RekeyDriver, RekeyWatch, Sampler, SegmentedTraffic
from space_vpn_lab.soak_report import anomalies, count_rekeys
from space_vpn_lab.space_side import Lifetimes, SpaceSideError
from space_vpn_lab.topology import CUSTOMER_HOST_IP, SPACE_HOST_IP

log = logging.getLogger(__name__)

PREFIX = "svs"
DEFAULT_JSON = Path("bench-results/soak.json")
SYSTEMS = ("agent", "strongswan")
#: IKE ~5 min, CHILD ~1 min: many rekeys in a soak of half an hour.
SOAK_LIFETIMES = Lifetimes(ike_s=300, child_s=75, child_rekey_s=60)
UP_TIMEOUT_S = 60.0


def play_event(lab: Lab, system: Any, event: PlannedEvent, t0_unix: float) -> dict[str, Any]:
    """One maintenance of the tunnel its role names at that moment: the endpoint goes
    (silently, or with a DELETE) and comes back after its downtime."""
    active = system.active_tunnel()
    tunnel = active if event.role is Role.ACTIVE else 3 - active
    record: dict[str, Any] = {"index": event.index, "at_s": event.at_s, "kind": event.kind.value,
                              "role": event.role.value, "tunnel": tunnel, "down_s": event.down_s, "error": None}
    record["started_s"] = round(time.time() - t0_unix, 3)
    try:
        if event.kind is Kind.SILENT:
            try:
                lab.space.silent_down(tunnel)
            except SpaceSideError as e:  # no SA to forget: the blackhole is what matters
                lab.space.block(tunnel)
                record["error"] = str(e)[:300]
        else:
            try:
                lab.space.graceful_down(tunnel)
            except SpaceSideError as e:
                record["error"] = str(e)[:300]
            lab.space.block(tunnel)
        log.info("soak: event %d %s on tunnel %d (%s)", event.index + 1, event.kind.value, tunnel, event.role.value)
    finally:
        time.sleep(max(0.0, t0_unix + record["started_s"] + event.down_s - time.time()))
        lab.space.restore(tunnel)
        record["restored_s"] = round(time.time() - t0_unix, 3)
    return record


def sleep_until(unix: float) -> None:
    time.sleep(max(0.0, unix - time.time()))


def run_system(name: str, plan: Plan, workdir: Path, interval_s: float, *, segment_s: float = SEGMENT_S,
               ike_version: int = 1, probe: str = "icmp", sample_s: float = 10.0) -> dict[str, Any]:
    """One system's soak in a fresh lab; a failure becomes record["error"], never an exception."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    record: dict[str, Any] = {"system": name, "error": None, "started_at": time.time()}
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            lab = stack.enter_context(Lab(workdir / "lab", prefix=lab_prefix(PREFIX), ike_version=ike_version))
            lab.space.reconfigure(lifetimes=SOAK_LIFETIMES)
            record["lab"] = lab_details(lab, "policy")
            if name == "agent":
                system: Any = AgentSystem(lab, workdir, stack, "policy", probe=probe)
            else:
                system = SeedSystem(lab, workdir, stack, "policy", lifetimes=SOAK_LIFETIMES)
            system.start(UP_TIMEOUT_S)
            record.update(measure(lab, system, plan, workdir, interval_s, segment_s, sample_s))
    except Exception as e:  # noqa: BLE001 - recorded; the next system goes on
        log.warning("soak %s failed: %s", name, e)
        record["error"] = f"{type(e).__name__}: {e}"[-600:]
    record["seconds"] = round(time.monotonic() - began, 1)
    return record


def measure(lab: Lab, system: Any, plan: Plan, workdir: Path, interval_s: float, segment_s: float,
            sample_s: float) -> dict[str, Any]:
    agent = getattr(system, "agent", None)
    traffic = SegmentedTraffic(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, interval_s,
                               workdir / "ping", segment_s)
    t0 = traffic.start()
    pids = {"charon": lambda: lab.customer_charon.pid}
    if agent is not None:
        pids = {"agent": lambda: agent.pid, **pids}
    sampler = Sampler(pids, t0, status=agent.status if agent else None, every_s=sample_s)
    sampler.start()
    watch = RekeyWatch(lambda: lab.customer_charon.session())
    watch.start()
    driver = RekeyDriver(lab.space.rekey, SOAK_LIFETIMES.child_rekey_s)
    driver.start()
    played = []
    try:
        for event in plan.events:
            sleep_until(t0 + event.at_s)
            played.append(play_event(lab, system, event, t0))
        sleep_until(t0 + plan.duration_s)
    finally:
        driver.stop()
        traffic.stop()
        sampler.stop()
        watch.stop()
    stopped_s = round(time.time() - t0, 3)
    figures = traffic.figures()
    spacing = figures["spacing_ms"] / 1000
    failovers = sampler.failovers if agent else None
    record = {"t0_unix": t0, "stopped_s": stopped_s, "traffic": figures,
              "loss": losses(played, traffic.runs, figures["sent"], spacing, failovers or (), stopped_s),
              "failovers": failovers, "failover_counts": sampler.failover_counts if agent else None,
              "final_redundant": safe_poll(system.redundant), "samples": sampler.samples,
              "resources": resources(sampler.samples)}
    logs = {p.name: p for p in workdir.rglob("*.log")}
    record["rekeys"] = {"customer": watch.figures(), "space_requested": driver.figures(),
                        "customer_log": _count(logs.get("customer.log"))}
    if agent is not None:
        spans = [(w.start_s - 1.0, w.end_s) for w in event_spans(played)]
        with agent.log_path.open(errors="replace") as lines:
            count, kept = anomalies(lines, spans, t0)
        record["anomalies"] = {"count": count, "lines": kept}
    return record


def _count(path: Path | None) -> dict[str, int]:
    if path is None:
        return count_rekeys(())
    with path.open(errors="replace") as lines:
        return count_rekeys(lines)


def picture(doc: dict[str, Any], path: Path) -> Path:
    """One row per system: replies green, losses red, events dashed, the agent's failovers."""
    rows = []
    for name, rec in doc["systems"].items():
        label = {"agent": "agent", "strongswan": "plain strongSwan"}.get(name, name)
        if rec.get("error") or "loss" not in rec:
            rows.append(Row(label, no_data="no data: " + (rec.get("error") or "not run").splitlines()[0][:90]))
            continue
        loss = rec["loss"]
        gaps = [run for e in loss["events"] for run in e["loss_runs"]] + loss["outside"]["loss_runs"]
        marks = [Mark(e["started_s"], f"{e['kind'][0].upper()}{e['tunnel']}") for e in loss["events"]]
        marks += [Mark(e["restored_s"], "") for e in loss["events"] if e.get("restored_s")]  # the endpoint is back
        marks += [Mark(f["t_s"], "", MarkKind.FAILOVER) for f in rec.get("failovers") or [] if f["t_s"] >= 0]
        rows.append(Row(f"{label}\n{loss['total_ms']:,} ms lost",
                        received=tuple(received_spans(rec["traffic"]["ping_window"], gaps)),
                        lost=tuple((a, b) for a, b, _n in gaps), marks=tuple(marks)))
    plan = doc["plan"]
    draw(rows, f"soak, {plan['duration_s']:g} s, seed {plan['seed']} (S silent, G graceful, tunnel number)",
         "seconds from the first ping", path, "maintenance: start and end")
    return path


def run_soak(workroot: Path, *, duration_s: float, seed: int, systems: list[str], json_path: Path | None,
             interval_s: float, segment_s: float = SEGMENT_S, log_dir: Path | None = None,
             ike_version: int = 1, sample_s: float = 10.0, draw_picture: bool = True) -> tuple[int, dict[str, Any]]:
    """The `space-vpn-lab soak` command; returns (exit code, the document)."""
    plan = plan_soak(seed, duration_s)
    json_path = json_path or DEFAULT_JSON
    json_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {}
    print(f"soak: {duration_s:g} s, seed {seed}, {len(plan.events)} events, systems {','.join(systems)}", flush=True)
    for name in systems:
        print(f"soak: {name} ...", flush=True)
        workdir = workroot / f"soak-{name}"
        results[name] = run_system(name, plan, workdir, interval_s, segment_s=segment_s, ike_version=ike_version,
                                   sample_s=sample_s)
        if log_dir is not None:
            keep_logs(workdir, log_dir / f"soak-{name}")
    notes = [f"one lab per system, one after the other, prefix {lab_prefix(PREFIX)}: policy mode, userspace ESP, "
             f"IKEv{ike_version}; the same events (times, kinds, roles) for both",
             "rekeys: the space side reauthenticates (IKEv1; IKEv2: rekeys) each IKE_SA after ~300 s by its own "
             "lifetime, and is asked over VICI to rekey each tunnel's CHILD_SA every 60 s: an IKEv1 Quick Mode "
             "responder takes the initiator's lifetime (charon: 'received 3600s lifetime, configured 75s'), so "
             "its own 75 s never applies; plain strongSwan's conns get the short lifetimes too (and rekey on their "
             "own); the agent has no lifetime setting and keeps its own "
             f"(IKE {desired.IKE_LIFETIME} s, CHILD rekey {desired.CHILD_REKEY} s)",
             "rekeys counted by the customer charon over VICI: child-rekey and ike-rekey events, and IKE_SAs the "
             "far end started (its IKEv1 reauthentication)"]
    lifetimes = {"space": asdict(SOAK_LIFETIMES),
                 "agent": {"ike_s": desired.IKE_LIFETIME, "child_s": desired.CHILD_LIFETIME,
                           "child_rekey_s": desired.CHILD_REKEY},
                 "strongswan": asdict(SOAK_LIFETIMES)}
    doc = document(plan, results, interval_s=interval_s, started=started, finished=time.time(), notes=notes,
                   lifetimes=lifetimes)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(doc))
    print()
    print(md_path.read_text(), end="")
    print(f"\nJSON: {json_path}  markdown: {md_path}")
    if draw_picture:
        try:
            print(f"picture: {picture(doc, json_path.with_suffix('.png'))}")
        except Exception as e:  # noqa: BLE001 - the figures are safe in JSON and markdown already
            print(f"soak: no picture: {e}", file=sys.stderr)
    return (1 if any(r.get("error") for r in results.values()) else 0), doc
