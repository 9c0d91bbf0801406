"""Route-mode part of the failover benchmark, run INSIDE the kernel VM (Debian's kernel:
kernel ESP, XFRM interfaces): `python -m space_vpn_lab.bench_kernel --results DIR --scenarios a,c`.
Same drivers as bench.py, with a route-based space side and the agent in route mode;
DIR/results.json is rewritten after every run, so a VM that times out still leaves figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from space_vpn_lab import bench
from space_vpn_lab import kernel_scenarios as ks

RESULTS_FILE = "results.json"
#: TCG emulation makes modp2048 and the agent's Python start-up slow.
UP_TIMEOUT_S = 120.0
LAB_OPTIONS = {"kernel_ipsec": True, "space_route_based": True}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="space_vpn_lab.bench_kernel")
    parser.add_argument("--results", required=True, type=Path, help="shared folder for results.json")
    parser.add_argument("--scenarios", default=",".join(bench.SCENARIOS))
    parser.add_argument("--systems", default=",".join(bench.SYSTEMS))
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--probe", choices=("icmp", "tcp", "none"), default="icmp")
    parser.add_argument("--ike-version", type=int, choices=(1, 2), default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scenarios = bench.parse_choice(args.scenarios, tuple(bench.SCENARIOS), "--scenarios")
    systems = bench.parse_choice(args.systems, bench.SYSTEMS, "--systems")
    interval = max(args.interval, bench.MIN_INTERVAL_S)
    path = args.results / RESULTS_FILE
    data: dict[str, Any] = {"kernel": os.uname().release, "complete": False, "runs": []}
    _write(path, data)
    ks.load_modules()
    # Unix sockets cannot live on the 9p share: work dirs go to a guest-local tmpfs.
    workroot = ks.make_local_root() / "bench"
    for record in bench.iter_runs("route", scenarios, systems, interval, workroot, lab_options=LAB_OPTIONS,
                                  up_timeout=UP_TIMEOUT_S, log_dir=args.results / "logs", repeat=max(1, args.repeat),
                                  probe=args.probe, ike_version=args.ike_version):
        data["runs"].append(record)
        _write(path, data)
    data["complete"] = True
    _write(path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
