"""`space-vpn-lab bench`: failover benchmark of the agent against plain strongSwan configured
like Heroku's article, each (mode, scenario, system) in a fresh lab. Figures per run: ms of
traffic lost (lost pings x interval) and seconds from the end of the maintenance until
the redundant state is back (None: not within the cap). Policy mode runs in the host lab
(userspace ESP); route mode inside the kernel VM (bench_kernel).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vici

from agent.lab import kernel_vm
from agent.lab.agent_process import (
    AgentProcess,
    heroku_agent_config,
    is_redundant,
    tunnels_of,
    write_secret_file,
)
from agent.lab.cli import SPACE, VPN, start_fake_api
from agent.lab.lab import Lab
from agent.lab.space_side import PROPOSAL, SpaceSideError
from agent.lab.topology import (
    CUSTOMER_HOST_IP,
    CUSTOMER_PUBLIC_IP,
    ROUTABLE_CIDR,
    SPACE_CIDR,
    SPACE_HOST_IP,
    TUNNEL_IPS,
)
from agent.lab.traffic import Pinger, ping

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.005
IKE_VERSION = 1
LEAD_S = 2.0  # traffic before the first action, so the loss is never a start-up artefact
REDUNDANCY_CAP_S = 60.0
POLL_S = 0.1
PREFIX = "svb"
PROBE = {"target": SPACE_HOST_IP, "interval": "100ms", "failures": 3}
SYSTEMS = ("agent", "strongswan")
MODES = ("policy", "route")
ROUTE_SCENARIOS = ("a", "b", "c", "d")
DEFAULT_JSON = Path("bench-results/bench.json")
INITIATE_TIMEOUT_MS = 20_000
#: What "plain strongSwan like the seed" means on each data path (recorded in the JSON).
BASELINE_DATA_PATH = {
    "policy": "seed conns vpn1+vpn2, both children up, userspace ESP (kernel-libipsec)",
    "route": "seed conns vpn1+vpn2 (policy-based, as the article), both children up, kernel ESP",
}


class BenchError(Exception):
    """A step of a run failed; the run records the message and the next one goes on."""


# --- pure parts: arithmetic, rows, table, document --------------------------------------

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


def parse_choice(text: str | None, allowed: tuple[str, ...], what: str) -> list[str]:
    """"a,c" -> ["a", "c"] in the order given; raises ValueError on an unknown item."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise ValueError(f"{what}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return list(dict.fromkeys(items))


def restored_cell(run: dict[str, Any]) -> str:
    if run.get("error"):
        return "error: " + run["error"].splitlines()[0][:60]
    if run.get("restore_s") is None:
        return f"never (> {run.get('restore_cap_s', REDUNDANCY_CAP_S):g} s)"
    return f"{run['restore_s']:.1f} s"


def build_row(run: dict[str, Any]) -> dict[str, str]:
    """The table cells of one run."""
    lost = "error" if run.get("ms_lost") is None else str(run["ms_lost"])
    return {"mode": run["mode"], "scenario": f"{run['scenario']} {run['scenario_name']}",
            "system": run["system"], "ms_lost": lost, "restored": restored_cell(run)}


HEADERS = {"mode": "mode", "scenario": "scenario", "system": "system", "ms_lost": "ms lost",
           "restored": "redundancy restored"}


def format_table(rows: list[dict[str, str]]) -> str:
    """Plain text, columns padded; ms lost right-aligned."""
    keys = list(HEADERS)
    widths = {k: max([len(HEADERS[k]), *(len(r[k]) for r in rows)]) for k in keys}

    def line(cells: dict[str, str]) -> str:
        parts = [cells[k].rjust(widths[k]) if k == "ms_lost" else cells[k].ljust(widths[k]) for k in keys]
        return "  ".join(parts).rstrip()
    return "\n".join([line(HEADERS), *(line(r) for r in rows)]) + "\n"


def format_markdown(rows: list[dict[str, str]], notes: list[str]) -> str:
    out = ["| " + " | ".join(HEADERS.values()) + " |", "|---|---|---|---:|---|"]
    out += ["| " + " | ".join(r[k].replace("|", "/") for k in HEADERS) + " |" for r in rows]
    return "\n".join(out) + "\n" + "".join(f"\n{n}" for n in notes) + ("\n" if notes else "")


def markdown_notes(document: dict[str, Any]) -> list[str]:
    """What a reader of the pasted table needs: how ms lost was counted, and when."""
    spacings = [r["spacing_ms"] for r in document["runs"] if r.get("spacing_ms")]
    measured = f" (measured spacing {min(spacings):g}-{max(spacings):g} ms)" if spacings else ""
    head = (f"`ping -i {document['interval_s']:g}`{measured}; ms lost = lost pings x measured spacing. "
            f"IKEv{document['ike_version']}; generated {document['generated_at']} by `space-vpn-lab bench` "
            f"in {document['duration_s']:.0f} s.")
    return [head, *document["notes"]]


def report_document(runs: list[dict[str, Any]], *, interval_s: float, started: float, finished: float,
                    notes: list[str]) -> dict[str, Any]:
    """The JSON written next to the table: every raw figure of every run."""
    return {"schema": 1, "generated_at": _iso(finished), "started_at": _iso(started),
            "duration_s": round(finished - started, 1), "interval_s": interval_s,
            "ike_version": IKE_VERSION, "redundancy_cap_s": REDUNDANCY_CAP_S,
            "baseline": BASELINE_DATA_PATH, "notes": notes, "runs": runs}


def _iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat(timespec="seconds")


# --- the two systems under test ------------------------------------------------------------

def space_redundant(lab: Lab) -> bool:
    """The far end's own view: both tunnels hold an IKE SA, one carries a child. It
    catches a customer side that still believes in an SA the space forgot."""
    sas = lab.space.sas()
    return all(t.ike_state == "ESTABLISHED" for t in sas.values()) and any(t.up for t in sas.values())


class AgentSystem:
    """The agent as a process in the customer namespace, fake API beside it."""

    name = "agent"

    def __init__(self, lab: Lab, workdir: Path, stack: ExitStack, mode: str) -> None:
        self.lab, self.workdir, self.stack, self.mode = lab, workdir, stack, mode
        self.api = None
        self.agent: AgentProcess | None = None

    def start(self, timeout: float) -> None:
        token = "HRKU-bench-" + secrets.token_hex(16)
        self.api = self.stack.enter_context(start_fake_api(self.lab, token))
        write_secret_file(self.workdir / "heroku-token", token)
        config = heroku_agent_config(
            self.workdir, api_url=self.api.url, vici_socket=self.lab.customer_charon.vici_socket,
            space=SPACE, vpn=VPN, local_address=CUSTOMER_PUBLIC_IP, mode=self.mode, poll_interval="1s")
        config["connections"][0]["probe"] = dict(PROBE)
        self.agent = AgentProcess(self.workdir, self.lab.topology.cust_ns, config)
        self.stack.callback(self.agent.stop)
        self.agent.start()
        self.agent.wait_for(self._redundant_status, timeout, interval=0.2)

    def _redundant_status(self, status: dict[str, Any]) -> bool:
        if self.mode == "route":
            tunnels = tunnels_of(status)
            return (len(tunnels) == 2 and all(t["child_state"] == "INSTALLED" for t in tunnels.values())
                    and status["connections"][0]["health"] == "ok")
        return is_redundant(status, 1) or is_redundant(status, 2)

    def redundant(self) -> bool:
        status = self.agent.status()
        return status is not None and self._redundant_status(status)

    def active_tunnel(self) -> int:
        status = self.agent.status() or {"connections": [{"tunnels": []}]}
        active = [n for n, t in tunnels_of(status).items() if t["role"] == "active"]
        return active[0] if active else 1

    def announce(self, number: int, down: bool) -> str:
        status, message = ("DOWN", "maintenance") if down else ("UP", "")
        self.api.set_tunnel_status(SPACE, VPN, number, status, message)
        return f"API tunnel {number} {status}"

    def drain(self, number: int, undo: bool = False) -> str:
        verb = "undrain" if undo else "drain"
        argv = [sys.executable, "-m", "agent.cli.agentctl", "--socket", self.agent.control_socket, verb, str(number)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        if result.returncode != 0:
            raise BenchError(f"agentctl {verb} {number} failed (exit {result.returncode}): "
                             f"{result.stderr.strip()[-200:]}")
        return f"agentctl {verb} {number}"

    def details(self) -> dict[str, Any]:
        status = self.agent.status() if self.agent else None
        conn = status["connections"][0] if status and status.get("connections") else {}
        return {"agent_mode": conn.get("mode"), "failovers": conn.get("failovers"),
                "final_health": conn.get("health"), "final_summary": conn.get("summary")}


def seed_name(number: int) -> str:
    return f"vpn{number}"


def seed_conn(number: int) -> dict[str, Any]:
    """The article's `conn vpnN`, translated per strongswan-vici.md (lab addresses)."""
    tunnel_ip = TUNNEL_IPS[number - 1]
    child = {"mode": "tunnel", "local_ts": [ROUTABLE_CIDR], "remote_ts": [SPACE_CIDR],
             "esp_proposals": [PROPOSAL], "life_time": "3600s", "rekey_time": "3060s",
             "dpd_action": "restart", "close_action": "none", "start_action": "trap"}
    return {"version": str(IKE_VERSION), "local_addrs": [CUSTOMER_PUBLIC_IP], "remote_addrs": [tunnel_ip],
            "proposals": [PROPOSAL], "reauth_time": "28800s", "dpd_delay": "10s", "dpd_timeout": "30s",
            "keyingtries": "0", "unique": "no",
            "local": {"auth": "psk", "id": CUSTOMER_PUBLIC_IP}, "remote": {"auth": "psk", "id": tunnel_ip},
            "children": {seed_name(number): child}}


class SeedSystem:
    """Plain strongSwan configured like the article, both tunnels brought up once (`ipsec up`)."""

    name = "strongswan"

    def __init__(self, lab: Lab, workdir: Path, stack: ExitStack, mode: str) -> None:
        self.lab, self.mode = lab, mode
        self.drained: int | None = None

    def start(self, timeout: float) -> None:
        with self.lab.customer_charon.connected() as session:
            for number in (1, 2):
                # The PSK goes inline: no local variable ever holds it.
                session.load_shared({"id": seed_name(number), "type": "IKE", "data": self.lab.psks[number - 1],
                                     "owners": [CUSTOMER_PUBLIC_IP, TUNNEL_IPS[number - 1]]})
                session.load_conn({seed_name(number): seed_conn(number)})
        if self.lab.kernel_ipsec:
            # Backstop as in kernel_scenarios: a route to the space whatever charon installs.
            subprocess.run(["ip", "-n", self.lab.topology.cust_ns, "route", "replace", SPACE_CIDR,
                            "via", "203.0.113.1", "src", CUSTOMER_HOST_IP], check=True, capture_output=True)
        for number in (1, 2):
            self._initiate(number)
        _wait(self.redundant, timeout, "plain strongSwan did not bring both tunnels up")

    def _initiate(self, number: int) -> None:
        with self.lab.customer_charon.connected() as session:
            list(session.initiate({"child": seed_name(number), "ike": seed_name(number),
                                   "timeout": INITIATE_TIMEOUT_MS}))

    def _sas(self) -> dict[int, list[dict]]:
        with self.lab.customer_charon.connected(timeout_s=5.0) as session:
            entries = list(session.list_sas())
        found: dict[int, list[dict]] = {1: [], 2: []}
        numbers = {seed_name(n): n for n in found}
        for entry in entries:
            for name, ike in entry.items():
                if name in numbers:
                    found[numbers[name]].append(ike)
        return found

    def redundant(self) -> bool:
        sas = self._sas()
        established = all(any(ike.get("state") == b"ESTABLISHED" for ike in ikes) for ikes in sas.values())
        children = [c for ikes in sas.values() for ike in ikes for c in (ike.get("child-sas") or {}).values()]
        return established and any(c.get("state") == b"INSTALLED" for c in children)

    def _packets_out(self) -> dict[int, int]:
        return {n: sum(int(c.get("packets-out", b"0")) for ike in ikes
                       for c in (ike.get("child-sas") or {}).values()) for n, ikes in self._sas().items()}

    def active_tunnel(self) -> int:
        """The tunnel whose child carries traffic: the one whose counters grow under a
        short ping (the newest child on both data paths); in doubt tunnel 1."""
        before = self._packets_out()
        ping(self.lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=5, interval=0.02)
        after = self._packets_out()
        grew = {n: after[n] - before.get(n, 0) for n in after}
        best = max(grew, key=grew.get)
        return best if grew[best] > 0 else 1

    def announce(self, number: int, down: bool) -> str:
        return f"API tunnel {number} {'DOWN' if down else 'UP'} (no effect on plain strongSwan)"

    def drain(self, number: int, undo: bool = False) -> str:
        """The operator's nearest equivalent: move the child by hand, put it back later."""
        if undo:
            self._initiate(number)
            return f"swanctl --initiate --child {seed_name(number)}"
        other = 3 - number
        steps = []
        if not any(c.get("state") == b"INSTALLED" for ike in self._sas()[other]
                   for c in (ike.get("child-sas") or {}).values()):
            self._initiate(other)
            steps.append(f"swanctl --initiate --child {seed_name(other)}")
        with self.lab.customer_charon.connected() as session:
            list(session.terminate({"child": seed_name(number), "timeout": 5000}))
        steps.append(f"swanctl --terminate --child {seed_name(number)}")
        return "; ".join(steps)

    def details(self) -> dict[str, Any]:
        return {"baseline_data_path": BASELINE_DATA_PATH[self.mode]}


SYSTEM_CLASSES: dict[str, type] = {"agent": AgentSystem, "strongswan": SeedSystem}


def _wait(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not _safe(predicate):
        if time.monotonic() >= deadline:
            raise BenchError(f"{message} within {timeout:g} s")
        time.sleep(POLL_S)


def _safe(predicate: Callable[[], bool]) -> bool:
    # A charon busy re-keying may answer slowly or not at all: that poll is just "not yet".
    try:
        return bool(predicate())
    except (OSError, vici.exception.SessionException, vici.exception.CommandException, KeyError) as e:
        log.debug("redundancy poll failed: %s", e)
        return False


# --- scenarios -------------------------------------------------------------------------------

class Timeline:
    """Clock of one run: actions at fixed offsets from the first ping, logged as events."""

    def __init__(self, lab: Lab, system: Any, active: int) -> None:
        self.lab, self.system, self.active = lab, system, active
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.restore_at: float | None = None

    def at(self, offset_s: float) -> None:
        time.sleep(max(0.0, self.t0 + offset_s - time.monotonic()))

    def mark(self, event: str) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.t0, 3), "event": event})
        log.info("bench: %s", event)

    def restored(self, event: str) -> None:
        self.mark(event)
        self.restore_at = time.monotonic()

    def block(self, number: int) -> None:
        """Blackhole the endpoint and forget its SA; after a graceful DELETE there may be
        no SA left to forget, and the blackhole (added first) is what matters then."""
        try:
            self.lab.space.silent_down(number)
        except SpaceSideError as e:
            log.info("bench: tunnel %s blocked, nothing left to forget (%s)", number, e)


def silent(run: Timeline) -> None:
    run.at(LEAD_S)
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} silently dropped (blackhole, SA forgotten)")
    run.at(LEAD_S + 10)
    run.lab.space.restore(run.active)
    run.restored(f"space: tunnel {run.active} blackhole lifted")


def graceful(run: Timeline) -> None:
    run.at(LEAD_S)
    run.lab.space.graceful_down(run.active)
    run.mark(f"space: tunnel {run.active} DELETE sent")
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} endpoint blocked")
    run.at(LEAD_S + 5)
    run.lab.space.restore(run.active)
    run.restored(f"space: tunnel {run.active} endpoint back")


def announced(run: Timeline) -> None:
    run.at(LEAD_S)
    run.mark(run.system.announce(run.active, down=True))
    run.at(LEAD_S + 5)
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} silently dropped")
    run.at(LEAD_S + 15)
    run.lab.space.restore(run.active)
    run.mark(run.system.announce(run.active, down=False))
    run.restored(f"space: tunnel {run.active} blackhole lifted")


def drain(run: Timeline) -> None:
    run.at(LEAD_S)
    run.mark(run.system.drain(run.active))
    run.at(LEAD_S + 5)
    run.restored(run.system.drain(run.active, undo=True))


@dataclass(frozen=True)
class ScenarioSpec:
    key: str
    name: str
    driver: Callable[[Timeline], None]
    traffic_s: float  # long enough to see plain strongSwan's ~30 s DPD loss where it applies


SCENARIOS = {s.key: s for s in (
    ScenarioSpec("a", "silent", silent, 45.0),
    ScenarioSpec("b", "graceful", graceful, 15.0),
    ScenarioSpec("c", "announced", announced, 50.0),
    ScenarioSpec("d", "drain", drain, 12.0),
)}


# --- runner ------------------------------------------------------------------------------------

def new_record(mode: str, spec: ScenarioSpec, system: str, interval_s: float) -> dict[str, Any]:
    return {"mode": mode, "scenario": spec.key, "scenario_name": spec.name, "system": system,
            "interval_s": interval_s, "traffic_s": spec.traffic_s, "sent": None, "received": None,
            "lost": None, "ms_lost": None, "restore_s": None, "restore_cap_s": REDUNDANCY_CAP_S,
            "active_tunnel": None, "events": [], "error": None, "started_at": _iso(time.time())}


def measure(lab: Lab, system: Any, spec: ScenarioSpec, interval_s: float) -> dict[str, Any]:
    """Ping for the scenario's window while it runs, and wait (traffic still flowing
    inside the window) until redundancy is back or the cap passes."""
    active = system.active_tunnel()
    if lab.space.route_based:
        lab.space.answer_via(active)  # the favourable case: AWS answers over the carrying tunnel
    # Count is only a bound: the window is timed, since ping often sends slower than -i.
    pinger = Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP,
                    count=ping_count(spec.traffic_s * 3, interval_s), interval=interval_s)
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
            if restore_s is None and _safe(system.redundant) and _safe(lambda: space_redundant(lab)):
                restore_s = round(now - run.restore_at, 2)
                run.mark("redundancy restored")
            time.sleep(POLL_S)
    spacing = packet_spacing(ping_s, result.transmitted, interval_s)
    return {"active_tunnel": active, "events": run.events, "sent": result.transmitted,
            "received": result.received, "lost": result.lost, "ping_s": round(ping_s, 2),
            "spacing_ms": round(spacing * 1000, 2), "ms_lost": ms_lost(result.lost, spacing),
            "ms_lost_nominal": ms_lost(result.lost, interval_s), "restore_s": restore_s}


def run_one(mode: str, spec: ScenarioSpec, system_name: str, interval_s: float, workroot: Path,
            lab_options: dict[str, Any], up_timeout: float, log_dir: Path | None) -> dict[str, Any]:
    """One run in a fresh lab; any failure becomes record["error"], never an exception."""
    record = new_record(mode, spec, system_name, interval_s)
    workdir = workroot / f"{mode}-{spec.key}-{system_name}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            lab = stack.enter_context(Lab(workdir / "lab", prefix=PREFIX, ike_version=IKE_VERSION, **lab_options))
            record["lab"] = lab_details(lab, mode)
            system = SYSTEM_CLASSES[system_name](lab, workdir, stack, mode)
            try:
                system.start(up_timeout)
                record.update(measure(lab, system, spec, interval_s))
            finally:
                record.update(system.details())
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
              lab_options: dict[str, Any], up_timeout: float, log_dir: Path | None) -> Iterator[dict[str, Any]]:
    for key in scenarios:
        for system_name in systems:
            print(f"bench: {mode} {key} {SCENARIOS[key].name} {system_name} ...", flush=True)
            yield run_one(mode, SCENARIOS[key], system_name, interval_s, workroot, lab_options, up_timeout, log_dir)


# --- host entry point ------------------------------------------------------------------------------

VM_BOOT_S = 120.0
VM_PER_RUN_S = 240.0


def route_runs(scenarios: list[str], interval_s: float, results_dir: Path) -> tuple[list[dict], list[str]]:
    """Route mode in the kernel VM (bench_kernel); a VM failure becomes notes, not a crash."""
    reason = kernel_vm.vng_available()
    if reason:
        return [], [f"route mode skipped: {reason}"]
    args = ["--scenarios", ",".join(scenarios), "--interval", repr(interval_s)]
    timeout = VM_BOOT_S + VM_PER_RUN_S * len(scenarios) * len(SYSTEMS)
    try:
        results = kernel_vm.run_in_vm("agent.lab.bench_kernel", args, results_dir, timeout)
        notes = []
    except kernel_vm.KernelVmError as e:
        results = e.results or {}
        notes = [f"route mode: kernel VM failed: {str(e).splitlines()[0]}"]
    runs = results.get("runs", [])
    if results and not results.get("complete"):
        notes.append("route mode: the VM stopped before all runs finished")
    return runs, notes


def run_bench(workroot: Path, *, modes: str | None, scenarios: str | None, json_path: Path | None,
              interval: float) -> int:
    """The `space-vpn-lab bench` command: runs, prints the table, writes JSON and markdown."""
    if interval < MIN_INTERVAL_S:
        print(f"bench: --interval must be at least {MIN_INTERVAL_S} s", file=sys.stderr)
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
                               up_timeout=60.0, log_dir=out_dir / "logs"))
    if "route" in chosen_modes:
        route_set = [k for k in chosen if k in ROUTE_SCENARIOS] if scenarios is None else chosen
        print(f"bench: route mode in the kernel VM ({','.join(route_set)}), this takes minutes ...", flush=True)
        vm_runs, vm_notes = route_runs(route_set, interval, out_dir / "vm")
        runs += vm_runs
        notes += vm_notes
    document = report_document(runs, interval_s=interval, started=started, finished=time.time(), notes=notes)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    rows = [build_row(r) for r in runs]
    (out_dir / "bench.md").write_text(format_markdown(rows, markdown_notes(document)))
    print()
    print(format_table(rows), end="")
    for note in notes:
        print(f"note: {note}")
    print(f"\nJSON: {json_path}  markdown: {out_dir / 'bench.md'}")
    return 1 if any(r.get("error") for r in runs) else 0
