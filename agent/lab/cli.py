"""`space-vpn-lab`: the simulated Private Space, for a demo on one machine (root).

    space-vpn-lab demo [--ike-version 1|2] [--hold]

Builds two network namespaces with real charon daemons (the space side plays both
Heroku tunnel endpoints), a local fake Platform API, runs the agent against them,
prints `agentctl status`, proves traffic crosses the tunnel, and cleans up.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.lab import topology
from agent.lab.agent_process import AgentProcess, heroku_agent_config, is_redundant, write_secret_file
from agent.lab.fake_api import FakePlatformApi
from agent.lab.lab import Lab

SPACE, VPN = "acme-space", "office"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="space-vpn-lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the agent against the simulated Private Space")
    demo.add_argument("--ike-version", type=int, choices=(1, 2), default=1)
    demo.add_argument("--hold", action="store_true", help="keep everything running until Ctrl-C")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for both tunnels")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="space-vpn-lab-") as tmp:
        return demo(Path(tmp), ike_version=args.ike_version, hold=args.hold, timeout=args.timeout)


def start_fake_api(lab: Lab, token: str) -> FakePlatformApi:
    """The fake Platform API, listening on 127.0.0.1 inside the customer namespace."""
    api = FakePlatformApi(token, netns=lab.topology.cust_ns).start()
    api.add_connection(
        SPACE, VPN,
        public_ip=topology.CUSTOMER_PUBLIC_IP,
        routable_cidrs=[topology.ROUTABLE_CIDR],
        space_cidr_block=topology.SPACE_CIDR,
        ike_version=lab.ike_version,
        tunnel_ips=list(lab.tunnel_ips),
        psks=list(lab.psks),
    )
    return api


def demo(workdir: Path, *, ike_version: int, hold: bool, timeout: float) -> int:
    print(f"Building the simulated Private Space in {workdir} ...", flush=True)
    token = "HRKU-lab-" + time.strftime("%H%M%S")
    with Lab(workdir / "lab", ike_version=ike_version) as lab, start_fake_api(lab, token) as api:
        write_secret_file(workdir / "heroku-token", token)
        config = heroku_agent_config(
            workdir, api_url=api.url, vici_socket=lab.customer_charon.vici_socket,
            space=SPACE, vpn=VPN, local_address=topology.CUSTOMER_PUBLIC_IP,
        )
        agent = AgentProcess(workdir, lab.topology.cust_ns, config)
        started = time.monotonic()
        agent.start()
        try:
            agent.wait_for(is_redundant, timeout)
            print(f"Both tunnels up in {time.monotonic() - started:.1f} s "
                  f"(tunnel 1 carries traffic, tunnel 2 is the hot standby).\n")
            subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, "status"],
                           check=False)
            result = lab.customer_ping(count=5, interval=0.2)
            print(f"\nping {topology.CUSTOMER_HOST_IP} -> {topology.SPACE_HOST_IP} through the tunnel: "
                  f"{result.received}/{result.transmitted} replies")
            if hold:
                print(f"\nHolding. Try: agentctl --socket {agent.control_socket} status   (Ctrl-C ends)")
                while agent.running():
                    time.sleep(1)
            return 0 if result.received else 1
        except (TimeoutError, RuntimeError) as e:
            print(f"demo failed: {e}\n--- agent log ---\n{agent.log_text()[-4000:]}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            agent.stop()
            print("Lab cleaned up.")


if __name__ == "__main__":
    sys.exit(main())
