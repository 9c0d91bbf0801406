"""Bounded test traffic inside lab namespaces: one-shot pings and a background
pinger that reports loss during a failover.

Every address is checked against the lab ranges first, so a typo can never send
packets anywhere outside the namespaces.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import signal
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

LAB_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "203.0.113.0/24", "198.51.100.0/24"))
#: Hard caps so no loop in a test can turn into a flood or run for ever.
MAX_COUNT = 100_000
MIN_INTERVAL_S = 0.001
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


class TrafficError(Exception):
    """Refused address or unusable ping output."""


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


def check_lab_address(address: str) -> str:
    """Return the address if it lies in a lab range, else raise TrafficError."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as e:
        raise TrafficError(f"not an IP address: {address!r}") from e
    if not any(parsed in net for net in LAB_NETWORKS):
        raise TrafficError(f"refusing traffic to non-lab address {address}")
    return address


def _argv(netns: str, src: str, dst: str, count: int, interval: float) -> list[str]:
    check_lab_address(src)
    check_lab_address(dst)
    if not 1 <= count <= MAX_COUNT:
        raise TrafficError(f"ping count {count} out of range")
    if interval < MIN_INTERVAL_S:
        raise TrafficError(f"ping interval {interval} s below {MIN_INTERVAL_S} s")
    # No -w: with it, -c counts replies and ping keeps sending while a tunnel is down.
    return ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-I", src, "-c", str(count),
            "-i", f"{interval:g}", "-W", "1", dst]


def _default_deadline(count: int, interval: float) -> float:
    # Every probe plus the last reply's 1 s wait, with slack for a slow start.
    return count * interval + 3.0


def parse_summary(output: str) -> PingResult:
    match = _SUMMARY.search(output)
    if match is None:
        raise TrafficError(f"no ping summary in output: {output.strip()[-200:]!r}")
    return PingResult(transmitted=int(match.group(1)), received=int(match.group(2)))


def ping(netns: str, src: str, dst: str, count: int = 5, interval: float = 0.2,
         deadline: float | None = None) -> PingResult:
    """Ping dst from src inside netns; returns when ping is done, or interrupts it
    after `deadline` seconds and returns what it counted so far."""
    parsed = Pinger(netns, src, dst, count, interval).start().wait(deadline)
    log.debug("ping %s -> %s in %s: %s/%s", src, dst, netns, parsed.received, parsed.transmitted)
    return parsed


class Pinger:
    """A background ping bounded by count and interval; `stop()` ends it early (SIGINT,
    so ping still prints its summary) and returns the tally."""

    def __init__(self, netns: str, src: str, dst: str, count: int, interval: float) -> None:
        self._argv = _argv(netns, src, dst, count, interval)
        self._deadline = _default_deadline(count, interval)
        self._proc: subprocess.Popen | None = None
        self.result: PingResult | None = None

    def start(self) -> "Pinger":
        if self._proc is not None:
            raise TrafficError("pinger already started")
        # ip netns exec execs ping, so this pid is ping's own.
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, text=True)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> PingResult:
        """Wait for ping to finish on its own; interrupt it after `timeout` s
        (default: long enough for count probes at interval)."""
        return self._collect(timeout if timeout is not None else self._deadline)

    def stop(self) -> PingResult:
        """Interrupt ping now (if still running) and return what it counted."""
        if self._proc is None:
            raise TrafficError("pinger not started")
        return self._collect(0)

    def _collect(self, timeout: float) -> PingResult:
        if self.result is not None:
            return self.result
        try:
            out, _err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out = self._interrupt()
        self.result = parse_summary(out)
        return self.result

    def _interrupt(self) -> str:
        # SIGINT makes ping print its summary; SIGKILL only if it ignores that.
        self._proc.send_signal(signal.SIGINT)
        try:
            out, _err = self._proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _err = self._proc.communicate()
        return out

    @property
    def sent(self) -> int:
        return self._require_result().transmitted

    @property
    def received(self) -> int:
        return self._require_result().received

    @property
    def lost(self) -> int:
        return self._require_result().lost

    def _require_result(self) -> PingResult:
        if self.result is None:
            raise TrafficError("pinger still running: call stop() or wait() first")
        return self.result

    def __enter__(self) -> "Pinger":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self.result is None:
            self.stop()
