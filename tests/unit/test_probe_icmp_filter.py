"""The ICMP probe's receive socket against the real kernel on 127.0.0.1: its BPF filter
keeps only the echo replies that carry the agent's identifier, so the probe thread
never wakes for the host's other pings (another agent's, the operator's, a monitor's)."""

from __future__ import annotations

import select
import socket
import time

from agent.adapters.probe_icmp import IcmpProbes, echo_request
from agent.core.health import ProbeTarget

LOOPBACK = "127.0.0.1"
OURS, THEIRS = 0x1234, 0x4321


def target() -> ProbeTarget:
    return ProbeTarget(key="acme-office", tunnel=1, target=LOOPBACK, source=LOOPBACK, interface=None,
                       interval=0.2, timeout=0.5, port=None)


def queued(sock: socket.socket) -> int:
    """Packets waiting on the socket (read and counted)."""
    count = 0
    try:
        while sock.recv(65535):
            count += 1
    except BlockingIOError:
        pass
    return count


def test_only_replies_with_our_identifier_reach_the_receiver():
    probes = IcmpProbes(OURS)
    probes.want_receiver(True)
    other = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        receiver = probes._receiver
        assert receiver is not None
        for seq in range(50):  # someone else's pings: the kernel answers each one
            other.sendto(echo_request(THEIRS, seq), (LOOPBACK, 0))
        time.sleep(0.2)
        assert queued(receiver) == 0
        probes.start(target(), LOOPBACK)
        deadline = time.monotonic() + 2
        answered = []
        while not answered and time.monotonic() < deadline:
            select.select([receiver], [], [], 0.1)
            answered = probes.on_ready(receiver.fileno())
        assert answered == [("acme-office", 1)]
    finally:
        other.close()
        probes.close()

