"""`space-vpn-lab bench-scale`: many VPN connections (two tunnels each) on one gateway,
one agent managing them all against one space charon (Lab.add_vpns), each connection
polled from the fake Platform API and probed (ICMP to its space host, every second).

Per connection count, in a fresh lab: the cold start (agent launch until every
connection is redundant, then until a ping crossed each one's tunnel), and at steady
state the agent's idle CPU and RSS (from /proc, nothing else asking it anything), the
wall time of its reconcile pass (its own pass_seconds), of a /metrics scrape and of
`agentctl status`. Figures are reported against the goals, never asserted.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from space_vpn_lab import topology
from space_vpn_lab.agent_process import AgentProcess, heroku_agent_config, is_redundant, write_secret_file
from space_vpn_lab.fake_api import SPACE, VPN, FakePlatformApi, serve_space_side, start_fake_api
from space_vpn_lab.lab import Lab
from space_vpn_lab.netns import in_netns
from space_vpn_lab.traffic import ping

log = logging.getLogger(__name__)

DEFAULT_JSON = Path("bench-results/bench-scale.json")
PREFIX = "svx"
METRICS_PORT = 19813  # inside the lab's customer namespace: no other lab sees it
#: The issue's goals, per figure (seconds, MB, % of one core).
GOALS = {"pass_s": 1.0, "scrape_s": 0.1, "status_s": 0.1, "rss_mb": 80.0, "idle_cpu_percent": 1.0}
PING_TRIES = 3  # pings per connection at most (one at a time, 1 s timeout each)


@dataclass(frozen=True)
class ScaleVpn:
    """One connection of the benchmark: its names at Heroku and the two hosts a ping
    through its tunnel goes between."""

    space: str
    vpn: str
    customer_host_ip: str
    space_host_ip: str


def build_connections(lab: Lab, api: FakePlatformApi, count: int) -> list[ScaleVpn]:
    """The lab's own VPN plus count - 1 more (Lab.add_vpns), each served by the fake API."""
    if count < 1:
        raise ValueError("at least one connection")
    vpns = [ScaleVpn(SPACE, VPN, topology.CUSTOMER_HOST_IP, topology.SPACE_HOST_IP)]
    for n, side in enumerate(lab.add_vpns(count - 1)):
        where = topology.scale_vpn_addresses(n)
        vpn = ScaleVpn(f"scale-space-{n}", f"vpn{n}", where.customer_host_ip, where.space_host_ip)
        serve_space_side(api, vpn.space, vpn.vpn, side)
        vpns.append(vpn)
    return vpns


def scale_config(workdir: Path, lab: Lab, api: FakePlatformApi, vpns: list[ScaleVpn], *,
                 poll_interval: str = "30s", probe_interval: str = "1s",
                 metrics_port: int | None = METRICS_PORT) -> dict[str, Any]:
    """One agent for every connection, each probing its space host over ICMP."""
    first = vpns[0]
    config = heroku_agent_config(workdir, api_url=api.url, vici_socket=lab.customer_charon.vici_socket,
                                 space=first.space, vpn=first.vpn, local_address=topology.CUSTOMER_PUBLIC_IP,
                                 poll_interval=poll_interval)
    template = config["connections"][0]
    config["connections"] = [
        {**template, "space": v.space, "vpn": v.vpn,
         "probe": {"target": v.space_host_ip, "interval": probe_interval, "failures": 3}}
        for v in vpns
    ]
    if metrics_port is not None:
        config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    return config


def all_redundant(status: dict[str, Any], count: int) -> bool:
    """Every one of `count` connections: tunnel 1 carries the CHILD_SA, tunnel 2 is the
    hot standby."""
    connections = status.get("connections", [])
    return len(connections) == count and all(is_redundant(status, index=i) for i in range(count))


def ping_each(lab: Lab, vpns: list[ScaleVpn], tries: int = PING_TRIES) -> list[bool]:
    """A ping through each connection's tunnel, one connection after the other (at
    most `tries` each); True where a reply came back."""
    crossed = []
    for vpn in vpns:
        ok = False
        for _ in range(tries):
            if ping(lab.topology.cust_ns, vpn.customer_host_ip, vpn.space_host_ip, count=1, deadline=3).received:
                ok = True
                break
        crossed.append(ok)
    return crossed


def scrape(netns: str, port: int = METRICS_PORT, timeout: float = 5.0) -> tuple[float, str]:
    """GET /metrics on 127.0.0.1:port inside `netns`: (seconds from connect to the last
    byte, the body)."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    began = time.perf_counter()
    with sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    took = time.perf_counter() - began
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"scrape failed: {head[:100]!r}")
    return took, body.decode()


def agentctl_status(control_socket: str) -> tuple[float, int, str]:
    """`agentctl status` as a person runs it, a process of its own: (wall seconds, exit
    code, output)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", control_socket, "status"],
                          capture_output=True, text=True, timeout=30)
    return time.perf_counter() - began, done.returncode, done.stdout


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system time of the process, every thread included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_pid(agent: AgentProcess) -> int:
    """`ip netns exec` execs the agent: the child's pid is the agent's own."""
    pid = agent.pid
    if pid is None:
        raise RuntimeError("agent not running")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        if b"agent.daemon.main" not in f.read():
            raise RuntimeError(f"pid {pid} is not the agent")
    return pid


def passes_so_far(agent: AgentProcess) -> int:
    status = agent.status()
    if status is None or not isinstance(status.get("passes"), int):
        raise RuntimeError("agentctl status gave no pass count")
    return status["passes"]


def pass_durations(agent: AgentProcess, samples: int, limit_s: float = 60.0) -> list[float]:
    """`pass_seconds` of `samples` distinct passes (told apart by the pass count), read
    every 0.2 s; at a look every 10 s while steady that can take a while, so bounded."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + limit_s
    while len(seen) < samples and time.monotonic() < deadline:
        status = agent.status()
        if status is not None and status.get("pass_seconds") is not None:
            seen[status["passes"]] = status["pass_seconds"]
        time.sleep(0.2)
    return list(seen.values())


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(workdir: Path, count: int, *, settle_s: float, idle_s: float, samples: int,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """One run: a fresh lab with `count` connections, the agent cold-started against it."""
    token = "HRKU-lab-" + secrets.token_hex(8)
    prefix = os.environ.get("SPACE_VPN_LAB_PREFIX") or PREFIX
    record: dict[str, Any] = {"connections": count, "tunnels": 2 * count}
    began = time.monotonic()
    with Lab(workdir / "lab", prefix=prefix) as lab, start_fake_api(lab, token) as api:
        vpns = build_connections(lab, api, count)
        record["lab_build_s"] = time.monotonic() - began
        write_secret_file(workdir / "heroku-token", token)
        agent = AgentProcess(workdir, lab.topology.cust_ns, scale_config(workdir, lab, api, vpns))
        try:
            started = time.monotonic()
            agent.start()
            agent.wait_for(lambda s: all_redundant(s, count), 30 + 3 * count, interval=0.05)
            record["cold_start_redundant_s"] = time.monotonic() - started
            crossed = ping_each(lab, vpns)
            record["cold_start_traffic_s"] = time.monotonic() - started
            record["pings_crossed"] = sum(crossed)
            say(f"{count} connections: redundant after {record['cold_start_redundant_s']:.2f} s, "
                f"a ping through {sum(crossed)}/{count} after {record['cold_start_traffic_s']:.2f} s")
            time.sleep(settle_s)
            pid = agent_pid(agent)
            passes_before = passes_so_far(agent)
            cpu_before, idle_began = cpu_seconds(pid), time.monotonic()
            time.sleep(idle_s)  # nothing asks the agent anything meanwhile
            idle = time.monotonic() - idle_began
            record["idle_window_s"] = idle
            record["idle_cpu_percent"] = 100 * (cpu_seconds(pid) - cpu_before) / idle
            record["idle_passes"] = passes_so_far(agent) - passes_before
            record["rss_mb"] = rss_mb(pid)
            durations = pass_durations(agent, samples)
            record["pass_s"] = _summary(durations) if durations else None
            record["scrape_s"] = _summary([scrape(lab.topology.cust_ns)[0] for _ in range(samples)])
            runs = [agentctl_status(agent.control_socket) for _ in range(samples)]
            record["status_s"] = _summary([took for took, _, _ in runs])
            record["status_exit_codes"] = sorted({code for _, code, _ in runs})
            final = agent.status() or {}
            record["health"] = final.get("health")
            record["healthy_connections"] = sum(c["health"] == "ok" for c in final.get("connections", []))
        except (TimeoutError, RuntimeError) as e:
            record["error"] = str(e)[:2000]
            say(f"{count} connections: failed: {str(e)[:300]}")
        finally:
            agent.stop()
            record["agent_log_tail"] = agent.log_text()[-1500:] if "error" in record else ""
    return record


def figure(record: dict[str, Any], name: str) -> float | None:
    value = record.get(name)
    return value["median"] if isinstance(value, dict) else value


def verdict(name: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= GOALS[name] else "missed"


def format_markdown(report: dict[str, Any]) -> str:
    rows = ["| connections | tunnels | cold start: redundant | + a ping through each | pass (median, max) "
            "| /metrics scrape | agentctl status | RSS | idle CPU | passes while idle |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        if "error" in r:
            rows.append(f"| {r['connections']} | {r['tunnels']} | failed: {r['error'][:80]} ||||||||")
            continue
        p = r["pass_s"]
        rows.append(
            f"| {r['connections']} | {r['tunnels']} | {r['cold_start_redundant_s']:.2f} s "
            f"| {r['cold_start_traffic_s']:.2f} s ({r['pings_crossed']}/{r['connections']}) "
            f"| {p['median'] * 1000:.1f} ms, {p['max'] * 1000:.1f} ms | {r['scrape_s']['median'] * 1000:.1f} ms "
            f"| {r['status_s']['median'] * 1000:.0f} ms | {r['rss_mb']:.1f} MB | {r['idle_cpu_percent']:.2f} % "
            f"| {r.get('idle_passes', 'n/a')} in {r['idle_window_s']:.0f} s |")
    goals = ["", "| figure | goal | " + " | ".join(f"{r['connections']} connections" for r in report["runs"]) + " |",
             "|---|---|" + "---|" * len(report["runs"])]
    units = {"pass_s": ("pass", "<= 1 s", 1000, "ms"), "scrape_s": ("scrape", "<= 100 ms", 1000, "ms"),
             "status_s": ("agentctl status", "<= 100 ms", 1000, "ms"), "rss_mb": ("RSS", "<= 80 MB", 1, "MB"),
             "idle_cpu_percent": ("idle CPU", "<= 1 % of a core", 1, "%")}
    for name, (label, goal, scale, unit) in units.items():
        cells = []
        for r in report["runs"]:
            value = figure(r, name)
            cells.append("n/a" if value is None else f"{value * scale:.{2 if unit == '%' else 1}f} {unit} "
                                                     f"({verdict(name, value)})")
        goals.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
    per = ["", "Per connection (medians divided by the connection count):", "",
           "| connections | pass | scrape | idle CPU | RSS above the smallest run |", "|---:|---:|---:|---:|---:|"]
    ok = [r for r in report["runs"] if "error" not in r]
    base = min(ok, key=lambda r: r["connections"]) if ok else None
    for r in ok:
        n = r["connections"]
        extra = "" if r is base else f"{(r['rss_mb'] - base['rss_mb']) / (n - base['connections']) * 1024:.0f} kB"
        per.append(f"| {n} | {figure(r, 'pass_s') * 1000 / n:.3f} ms | {figure(r, 'scrape_s') * 1000 / n:.3f} ms "
                   f"| {r['idle_cpu_percent'] / n:.3f} % | {extra} |")
    notes = ["", f"Generated {report['generated_at']} by `{report['command']}` in {report['duration_s']:.0f} s; "
             f"{report['machine']['cpus']} CPUs, load average {report['machine']['loadavg']} at the start. "
             f"Pass: the agent's own `pass_seconds` (observe, plan, apply) of up to {report['samples']} distinct passes "
             f"(at most 60 s of them); "
             f"scrape and agentctl status: medians of {report['samples']}; idle CPU over "
             f"{report['idle_s']:g} s with nothing asking the agent anything, {report['settle_s']:g} s after "
             f"the cold start; policy mode, IKEv1, userspace ESP, probes every 1 s, API polled every 30 s."]
    return "\n".join(rows + goals + per + notes) + "\n"


def run_bench_scale(workroot: Path, *, counts: list[int], json_path: Path | None, settle_s: float,
                    idle_s: float, samples: int) -> int:
    json_path = json_path or DEFAULT_JSON
    json_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    loadavg = open("/proc/loadavg").read().split()[:3]
    runs = []
    for count in counts:
        rundir = workroot / f"n{count}"
        rundir.mkdir(parents=True)
        runs.append(measure(rundir, count, settle_s=settle_s, idle_s=idle_s, samples=samples))
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(started)),
        "command": "space-vpn-lab bench-scale --connections " + ",".join(map(str, counts)),
        "duration_s": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "loadavg": " ".join(loadavg)},
        "goals": GOALS, "settle_s": settle_s, "idle_s": idle_s, "samples": samples,
        "runs": runs,
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    markdown = format_markdown(report)
    json_path.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return 0 if all("error" not in r for r in runs) else 1
