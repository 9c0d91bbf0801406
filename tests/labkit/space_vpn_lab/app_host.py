"""The space side's internal-routing app, as harsh as a real Private Space: its addresses
(on lo in the space namespace) serve TCP on one port through a small listener process
that accepts and closes, and answer no ICMP echo (nftables drops it, counted). An
address can be taken away (`retire`: dropped silently, like a load balancer node that
is gone); SYNs are counted per address, so tests see where probes went.

`python -m space_vpn_lab.app_host --listen ADDR --port N` is the listener itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from space_vpn_lab.topology import kill_pids
from space_vpn_lab.traffic import check_lab_address

log = logging.getLogger(__name__)

#: nftables table (family inet) the app owns in the space namespace.
NFT_TABLE = "svpn_app"
READY_LINE = "ready"
START_TIMEOUT_S = 10.0
#: Seconds between the listener's checks that the lab that started it still runs.
PARENT_CHECK_S = 0.5


class AppHostError(Exception):
    """The listener did not start, or an nftables operation failed."""


def _counter_name(address: str) -> str:
    return "syn_" + address.replace(".", "_")


class AppHost:
    """Start with `start()` once the namespace exists; `stop()` is idempotent and also
    runs after a failed start."""

    def __init__(self, netns: str, addresses: Sequence[str], port: int) -> None:
        self.netns = netns
        self.addresses = tuple(check_lab_address(a) for a in addresses)
        self.port = port
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        try:
            self._load_nft()
            self._start_listener()
        except BaseException:
            self.stop()
            raise
        log.info("app host in %s: TCP %s on %s, no ICMP", self.netns, self.port, ", ".join(self.addresses))

    def _start_listener(self) -> None:
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "space_vpn_lab.app_host",
                "--port", str(self.port), *(arg for a in self.addresses for arg in ("--listen", a))]
        # ip netns exec execs python: this pid is the listener's own.
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True)
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT_S)
        line = self._proc.stdout.readline().strip() if ready else ""
        if line != READY_LINE:
            self._proc.kill()
            _out, err = self._proc.communicate(timeout=5)
            raise AppHostError(f"app listener did not start: {err.strip()[-500:] or 'no output'}")

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                kill_pids([self._proc.pid])
            self._proc.wait(timeout=5)
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
            self._proc = None
        self._nft("delete", "table", "inet", NFT_TABLE, check=False)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- knobs and counters ------------------------------------------------------------

    def retire(self, address: str) -> None:
        """The address stops answering anything (its packets are dropped, unanswered)."""
        self._nft("add", "element", "inet", NFT_TABLE, "retired", "{ %s }" % check_lab_address(address))

    def reinstate(self, address: str) -> None:
        self._nft("delete", "element", "inet", NFT_TABLE, "retired", "{ %s }" % check_lab_address(address),
                  check=False)

    def syns(self, address: str) -> int:
        """TCP SYNs that reached the address's port since start (retired ones included)."""
        return self._counter(_counter_name(address))

    def icmp_dropped(self) -> int:
        """ICMP echo requests to the app that were dropped."""
        return self._counter("icmp_dropped")

    def _counter(self, name: str) -> int:
        result = self._nft("-j", "list", "counter", "inet", NFT_TABLE, name)
        for item in json.loads(result.stdout).get("nftables", []):
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AppHostError(f"no counter {name} in nft output")

    # --- nftables ---------------------------------------------------------------------------

    def _load_nft(self) -> None:
        addresses = ", ".join(self.addresses)
        counters = "\n".join(f"  counter {_counter_name(a)} {{ }}" for a in self.addresses)
        # SYNs are counted before the retired check: a probe to a retired address still shows.
        count_rules = "\n".join(f"    ip daddr {a} tcp dport {self.port} tcp flags & (syn | ack) == syn "
                                f"counter name {_counter_name(a)}" for a in self.addresses)
        script = f"""
table inet {NFT_TABLE} {{
  set retired {{
    type ipv4_addr
  }}
  counter icmp_dropped {{ }}
{counters}
  chain input {{
    type filter hook input priority -5; policy accept;
{count_rules}
    ip daddr @retired drop
    ip daddr {{ {addresses} }} icmp type echo-request counter name icmp_dropped drop
  }}
}}
"""
        self._nft("delete", "table", "inet", NFT_TABLE, check=False)
        self._nft("-f", "-", stdin=script)

    def _nft(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        argv = ["ip", "netns", "exec", self.netns, "nft", *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AppHostError(f"nft {' '.join(args[:4])} failed: {result.stderr.strip()}")
        return result


# --- the listener process ------------------------------------------------------------------

def serve(addresses: Sequence[str], port: int) -> int:
    """Accept and close on every address until SIGTERM or until the parent is gone."""
    parent = os.getppid()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    listeners = []
    for address in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((check_lab_address(address), port))
        sock.listen(128)
        sock.setblocking(False)
        listeners.append(sock)
    print(READY_LINE, flush=True)
    poller = select.poll()
    for sock in listeners:
        poller.register(sock.fileno(), select.POLLIN)
    by_fd = {sock.fileno(): sock for sock in listeners}
    while not stopping and os.getppid() == parent:
        for fd, _events in poller.poll(PARENT_CHECK_S * 1000):
            try:
                conn, _peer = by_fd[fd].accept()
            except OSError:
                continue  # reset before we got to it: the probe's RST
            conn.close()
    for sock in listeners:
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="space_vpn_lab.app_host")
    parser.add_argument("--listen", action="append", required=True, help="address to serve (repeatable)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(args.listen, args.port)


if __name__ == "__main__":
    sys.exit(main())
