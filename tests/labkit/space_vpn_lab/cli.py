"""`space-vpn-lab`: the simulated Private Space, for a demo on one machine (root).

    space-vpn-lab demo [--ike-version 1|2] [--hold] [--compare]
    space-vpn-lab bench [--modes policy,route] [--scenarios a,b,c,d,e,f,g] [--json PATH] [--interval 0.01] [--repeat 1]
    space-vpn-lab bench-ha [--systems strongswan,agent] [--advert-int 0.2] [--settle 10] [--json PATH]
    space-vpn-lab bench-scale [--connections 50 | 5,20,50] [--idle 30] [--json PATH]
    space-vpn-lab soak [--duration 30m] [--seed 1] [--systems agent,strongswan] [--json PATH]

Builds two network namespaces with real charon daemons (the space side plays both
Heroku tunnel endpoints), a local fake Platform API, runs the agent against them,
prints `agentctl status`, proves traffic crosses the tunnel, plays a silent maintenance
of the active tunnel (the failover as it happens, the traffic lost, the tunnel's return),
and cleans up.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agent.core.durations import parse_duration
from space_vpn_lab import bench, bench_ha, bench_scale, soak, topology
from space_vpn_lab.agent_process import AgentProcess, heroku_agent_config, is_redundant, write_secret_file
from space_vpn_lab.bench_systems import PROBE
from space_vpn_lab.demo_maintenance import compare_with_strongswan, play_silent_maintenance
from space_vpn_lab.fake_api import SPACE, VPN, FakePlatformApi, start_fake_api
from space_vpn_lab.lab import Lab


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="space-vpn-lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the agent against the simulated Private Space")
    demo.add_argument("--ike-version", type=int, choices=(1, 2), default=1)
    demo.add_argument("--hold", action="store_true", help="keep everything running until Ctrl-C")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for both tunnels")
    demo.add_argument("--compare", action="store_true",
                      help="then play the same maintenance against plain strongSwan configured like the article")
    bench = sub.add_parser("bench-cold-start", help="measure agent launch -> both tunnels in their desired state")
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--ike-version", type=int, choices=(1, 2), default=1)
    failover = sub.add_parser("bench", help="failover benchmark: the agent against plain strongSwan like the article")
    failover.add_argument("--modes", default=None,
                          help="policy,route (default: both where the kernel VM can run, else policy)")
    failover.add_argument("--scenarios", default=None,
                          help="a silent, b graceful, c telemetry (DOWN 10 s after a silent loss), d drain, "
                               "e cidr update, f reordered answer, g re-creation by Heroku (default: all)")
    failover.add_argument("--json", type=Path, default=None, help="results file (default bench-results/bench.json)")
    failover.add_argument("--interval", type=float, default=0.01, help="ping interval in seconds (>= 0.005)")
    failover.add_argument("--repeat", type=int, default=1,
                          help="runs of each scenario and system (the notes give median and range)")
    failover.add_argument("--probe", choices=("icmp", "tcp", "none"), default="icmp",
                          help="the agent's data-path probe: icmp (a host that answers ping), tcp (a TCP connect "
                               "to the internal-routing app, as in a real space) or none (liveness from IKE only)")
    failover.add_argument("--ike-version", type=int, choices=(1, 2), default=1)
    ha = sub.add_parser("bench-ha", help="gateway pair under keepalived: the master powered off, the agent pair "
                                         "against plain strongSwan on both nodes")
    ha.add_argument("--systems", default=None, help="strongswan,agent (default: both)")
    ha.add_argument("--interval", type=float, default=0.01, help="ping interval in seconds (>= 0.005)")
    ha.add_argument("--advert-int", type=float, default=0.2, help="VRRP advert interval in seconds (VRRPv3)")
    ha.add_argument("--settle", type=float, default=bench_ha.DEFAULT_SETTLE_S,
                    help="seconds the pair runs before the power-off (plain strongSwan's backup keeps "
                         "retrying meanwhile: its loss depends on it)")
    ha.add_argument("--cap", type=float, default=bench_ha.DEFAULT_CAP_S,
                    help="seconds to wait for traffic after the power-off")
    ha.add_argument("--repeat", type=int, default=1)
    ha.add_argument("--json", type=Path, default=None, help="results file (default bench-results/bench-ha.json)")
    scale = sub.add_parser("bench-scale", help="many VPN connections on one gateway: cold start, pass, scrape, "
                                               "agentctl status, RSS and idle CPU against the goals")
    scale.add_argument("--connections", default="50",
                       help="connections (two tunnels each) per run, e.g. 50, or 5,20,50 for one run each")
    scale.add_argument("--settle", type=float, default=10.0, help="seconds after the cold start before measuring")
    scale.add_argument("--idle", type=float, default=30.0, help="seconds the idle CPU is measured over")
    scale.add_argument("--samples", type=int, default=10, help="passes, scrapes and agentctl runs measured")
    scale.add_argument("--json", type=Path, default=None,
                       help="results file (default bench-results/bench-scale.json; markdown beside it)")
    long = sub.add_parser("soak", help="maintenance events and frequent rekeys for a long time, a ping every 10 ms: "
                                       "losses outside the events, the agent's memory, fds, threads and CPU")
    long.add_argument("--duration", type=_duration, default=_duration("30m"), help="per system, e.g. 60s, 30m, 2h")
    long.add_argument("--seed", type=int, default=1, help="of the event schedule (the same for every system)")
    long.add_argument("--systems", default="agent,strongswan", help="agent,strongswan (one after the other)")
    long.add_argument("--interval", type=float, default=0.01, help="ping interval in seconds (>= 0.005)")
    long.add_argument("--segment", type=_duration, default=_duration("5m"),
                      help="one ping process per this much traffic (bounds its output file)")
    long.add_argument("--ike-version", type=int, choices=(1, 2), default=1)
    long.add_argument("--json", type=Path, default=None, help="results file (default bench-results/soak.json)")
    return parser


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(not 1 <= n <= topology.SCALE_MAX_VPNS + 1 for n in counts):
        raise SystemExit(f"--connections: 1 to {topology.SCALE_MAX_VPNS + 1} each, got {text!r}")
    return counts


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text, path="duration")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="space-vpn-lab-") as tmp:
        if args.command == "bench":
            return bench.run_bench(Path(tmp), modes=args.modes, scenarios=args.scenarios,
                                   json_path=args.json, interval=args.interval, repeat=args.repeat,
                                   probe=args.probe, ike_version=args.ike_version)
        if args.command == "bench-ha":
            return bench_ha.run_bench_ha(Path(tmp), systems=args.systems, interval=args.interval,
                                         advert_int=args.advert_int, settle_s=args.settle, cap_s=args.cap,
                                         repeat=args.repeat, json_path=args.json)
        if args.command == "bench-scale":
            return bench_scale.run_bench_scale(Path(tmp), counts=_counts(args.connections), json_path=args.json,
                                               settle_s=args.settle, idle_s=args.idle, samples=args.samples)
        if args.command == "soak":
            try:
                systems = bench.parse_choice(args.systems, soak.SYSTEMS, "--systems")
            except ValueError as e:
                print(f"soak: {e}", file=sys.stderr)
                return 2
            if args.interval < bench.MIN_INTERVAL_S:
                print(f"soak: --interval must be at least {bench.MIN_INTERVAL_S} s", file=sys.stderr)
                return 2
            json_path = args.json or soak.DEFAULT_JSON
            code, _doc = soak.run_soak(Path(tmp), duration_s=args.duration, seed=args.seed, systems=systems,
                                       json_path=json_path, interval_s=args.interval, segment_s=args.segment,
                                       log_dir=json_path.parent / "logs", ike_version=args.ike_version)
            return code
        if args.command == "bench-cold-start":
            return bench_cold_start(Path(tmp), runs=args.runs, ike_version=args.ike_version)
        return demo(Path(tmp), ike_version=args.ike_version, hold=args.hold, timeout=args.timeout,
                    compare=args.compare)


@contextlib.contextmanager
def simulated_space(workdir: Path, *, ike_version: int) -> Iterator[tuple[Lab, FakePlatformApi, AgentProcess]]:
    """Lab + fake API + a configured (not started) agent; all torn down on exit."""
    token = "HRKU-lab-" + secrets.token_hex(8)
    with Lab(workdir / "lab", ike_version=ike_version) as lab, start_fake_api(lab, token) as api:
        write_secret_file(workdir / "heroku-token", token)
        config = heroku_agent_config(
            workdir, api_url=api.url, vici_socket=lab.customer_charon.vici_socket,
            space=SPACE, vpn=VPN, local_address=topology.CUSTOMER_PUBLIC_IP,
        )
        config["connections"][0]["probe"] = dict(PROBE)  # as in the failover benchmark
        agent = AgentProcess(workdir, lab.topology.cust_ns, config)
        try:
            yield lab, api, agent
        finally:
            agent.stop()


def bench_cold_start(workdir: Path, *, runs: int, ike_version: int) -> int:
    """Agent launched with both charons empty -> tunnel 1 carries a CHILD_SA and tunnel 2
    holds its IKE SA. Includes the Python start-up of the agent and one API call."""
    figures = []
    for run in range(runs):
        rundir = workdir / f"run{run}"
        rundir.mkdir()
        with simulated_space(rundir, ike_version=ike_version) as (_lab, _api, agent):
            started = time.monotonic()
            agent.start()
            agent.wait_for(is_redundant, 60, interval=0.01)
            figures.append(time.monotonic() - started)
    print(f"cold start, IKEv{ike_version}, {runs} runs: median {statistics.median(figures) * 1000:.0f} ms, "
          f"min {min(figures) * 1000:.0f} ms, max {max(figures) * 1000:.0f} ms")
    return 0


def demo(workdir: Path, *, ike_version: int, hold: bool, timeout: float, compare: bool = False) -> int:
    print(f"Building the simulated Private Space in {workdir} ...", flush=True)
    ok = False
    with simulated_space(workdir, ike_version=ike_version) as (lab, _api, agent):
        started = time.monotonic()
        agent.start()
        try:
            agent.wait_for(is_redundant, timeout)
            print(f"Both tunnels up in {time.monotonic() - started:.1f} s "
                  f"(tunnel 1 carries traffic, tunnel 2 is the hot standby).\n")
            show_status(agent)
            result = lab.customer_ping(count=5, interval=0.2)
            print(f"\nping {topology.CUSTOMER_HOST_IP} -> {topology.SPACE_HOST_IP} through the tunnel: "
                  f"{result.received}/{result.transmitted} replies", flush=True)
            print("\nA silent maintenance of the active tunnel, while a ping runs:", flush=True)
            played = play_silent_maintenance(lab, agent, workdir, say=lambda line: print(line, flush=True))
            print()
            show_status(agent)
            ok = bool(result.received) and played["failover_s"] is not None
            if hold:
                print(f"\nHolding. Try: agentctl --socket {agent.control_socket} status --watch   (Ctrl-C ends)")
                while agent.running():
                    time.sleep(1)
        except (TimeoutError, RuntimeError) as e:
            print(f"demo failed: {e}\n--- agent log ---\n{agent.log_text()[-4000:]}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            agent.stop()
            print("Lab cleaned up.")
    if compare and ok:
        compare_with_strongswan(workdir / "compare", ike_version, say=lambda line: print(line, flush=True))
        print("Lab cleaned up.")
    return 0 if ok else 1


def show_status(agent: AgentProcess) -> None:
    subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, "status"],
                   check=False)


if __name__ == "__main__":
    sys.exit(main())
