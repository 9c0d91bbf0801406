"""The TCP data-path probe against real sockets: the connect engine on 127.0.0.1 (an
open port answers SYN-ACK, a closed one RST, a listener with a full backlog drops the
SYN), and the whole Prober inside a network namespace of its own (only lo, so nothing
can leave the machine) with RFC 1918 targets: results, failures, names that move or do
not resolve, and no socket or thread left behind."""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.adapters.probe_icmp import checksum
from agent.adapters.probe_tcp import TcpProbes, describe, parse_answer
from agent.core.health import ProbeTarget

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def target(port: int, **overrides) -> ProbeTarget:
    fields = dict(key="acme-office", tunnel=1, target=LOOPBACK, source=LOOPBACK, interface=None,
                  interval=0.2, timeout=0.2, port=port)
    fields.update(overrides)
    return ProbeTarget(**fields)


def listener(backlog: int = 16) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(backlog)
    return sock


def closed_port() -> int:
    """A port nothing listens on (bound, never listening: nobody else takes it meanwhile)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((LOOPBACK, 0))
    closed_port.holders.append(holder)
    return holder.getsockname()[1]


closed_port.holders = []


def full_backlog() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: the kernel drops further SYNs unanswered."""
    sock = listener(backlog=0)
    port = sock.getsockname()[1]
    clients = []
    for _ in range(8):  # bounded: listen(0) queues one connection, maybe two
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        client.connect_ex((LOOPBACK, port))
        clients.append(client)
        _, writable, _ = select.select([], [client], [], 0.3)
        if not writable:
            return sock, clients
    raise AssertionError("the listener kept accepting SYNs")


def wait_outcome(probes: TcpProbes, timeout: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fds = probes.poll_fds()
        if not fds:
            return None
        poller = select.poll()
        for fd, events in fds.items():
            poller.register(fd, events)
        for fd, _ in poller.poll(50):
            outcomes = probes.on_ready(fd)
            if outcomes:
                return outcomes[0]
    return None


def test_open_port_answers_with_syn_ack():
    server = listener()
    probes = TcpProbes()
    try:
        assert probes.start(target(server.getsockname()[1]), LOOPBACK) is None  # in flight
        outcome = wait_outcome(probes)
        assert (outcome.ok, outcome.detail, outcome.slot) == (True, "SYN-ACK", ("acme-office", 1))
        assert probes.in_flight() == 0
    finally:
        probes.close()
        server.close()


def test_closed_port_answers_with_rst_and_that_is_an_answer():
    probes = TcpProbes()
    try:
        outcome = probes.start(target(closed_port()), LOOPBACK) or wait_outcome(probes)
        assert (outcome.ok, outcome.detail) == (True, "RST")
    finally:
        probes.close()


def test_the_connection_is_reset_not_closed_and_leaves_no_time_wait():
    server = listener()
    port = server.getsockname()[1]
    probes = TcpProbes()
    try:
        probes.start(target(port), LOOPBACK)
        assert wait_outcome(probes).ok
        accepted, _ = server.accept()
        with accepted:
            accepted.settimeout(2.0)
            with pytest.raises(ConnectionResetError):  # an RST (SO_LINGER 0), not a FIN
                accepted.recv(1)
    finally:
        probes.close()
        server.close()
    assert not _time_wait_towards(port)


def _time_wait_towards(port: int) -> list[str]:
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return [line for line in lines if line.split()[2].endswith(f":{port:04X}") and line.split()[3] == "06"]


def test_a_dropped_syn_stays_in_flight_until_cancelled():
    server, clients = full_backlog()
    probes = TcpProbes()
    baseline = open_fds()
    try:
        assert probes.start(target(server.getsockname()[1]), LOOPBACK) is None
        assert wait_outcome(probes, timeout=0.5) is None
        assert probes.in_flight() == 1 and open_fds() == baseline + 1
        probes.cancel(("acme-office", 1))
        assert probes.in_flight() == 0 and open_fds() == baseline
    finally:
        probes.close()
        for sock in (server, *clients):
            sock.close()


def test_one_connect_per_slot_and_no_fd_left_behind():
    server = listener(backlog=128)
    probes = TcpProbes()
    baseline = open_fds()
    try:
        for _ in range(50):
            probes.start(target(server.getsockname()[1]), LOOPBACK)
            probes.start(target(server.getsockname()[1]), LOOPBACK)  # replaces the first
            assert probes.in_flight() == 1
            assert wait_outcome(probes).ok
            conn, _ = server.accept()
            conn.close()
        assert open_fds() == baseline
    finally:
        probes.close()
        server.close()


def test_failures_decided_at_once():
    probes = TcpProbes()
    baseline = open_fds()
    try:
        missing = probes.start(target(443, interface="svp-nosuch0"), LOOPBACK)
        assert (missing.ok, missing.detail) == (False, "ENODEV")
        foreign = probes.start(target(443, source="192.0.2.1"), LOOPBACK)  # not ours: bind fails
        assert (foreign.ok, foreign.detail) == (False, "EADDRNOTAVAIL")
        assert open_fds() == baseline
    finally:
        probes.close()


@pytest.mark.parametrize("code, text", [(0, "SYN-ACK"), (errno.ECONNREFUSED, "RST"),
                                        (errno.EHOSTUNREACH, "EHOSTUNREACH"), (99999, "errno 99999")])
def test_describe(code, text):
    assert describe(code) == text


# --- answers that arrive on another interface: the watcher --------------------------------------

SYN, RST, ACK, PSH = 0x02, 0x04, 0x10, 0x08


def segment(src: str, sport: int, dst: str, dport: int, flags: int, *, options: bytes = b"",
            fragment: int = 0) -> bytes:
    """An IPv4 packet carrying one TCP segment, checksums filled in."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2001, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(tcp), 7, fragment, 64,
                         socket.IPPROTO_TCP, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + tcp


@pytest.mark.parametrize("flags, kind", [(SYN | ACK, "SYN-ACK"), (RST, "RST"), (RST | ACK, "RST"),
                                         (ACK, None), (SYN, None), (PSH | ACK, None), (0, None)])
def test_parse_answer(flags, kind):
    parsed = parse_answer(segment("10.0.0.20", 443, "172.16.0.2", 40000, flags))
    assert parsed == (None if kind is None else (("10.0.0.20", 443, "172.16.0.2", 40000), kind))


def test_parse_answer_honours_ip_options_and_refuses_the_rest():
    packet = segment("10.0.0.20", 443, "172.16.0.2", 40000, SYN | ACK, options=b"\x01\x01\x01\x00")
    assert parse_answer(packet) == (("10.0.0.20", 443, "172.16.0.2", 40000), "SYN-ACK")
    assert parse_answer(segment("10.0.0.20", 443, "172.16.0.2", 40000, RST, fragment=1)) is None
    udp = bytearray(segment("10.0.0.20", 443, "172.16.0.2", 40000, RST))
    udp[9] = socket.IPPROTO_UDP
    assert parse_answer(bytes(udp)) is None
    for length in (0, 19, 20, 33):
        assert parse_answer(segment("10.0.0.20", 443, "172.16.0.2", 40000, RST)[:length]) is None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")


def inject(packet: bytes) -> None:
    """Hand a crafted packet to the local stack through lo (IP_HDRINCL)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(packet, (LOOPBACK, 0))


@needs_root
def test_the_watcher_takes_an_answer_the_bound_socket_never_sees():
    """A bound probe whose SYN the far side drops; an answer for its flow arrives
    (crafted here, as if over the other tunnel): the watcher matches it, the probe's
    socket goes. Segments that answer nothing, or another flow, do not count."""
    server, clients = full_backlog()
    port = server.getsockname()[1]
    probes = TcpProbes()
    probes.want_watcher(True)
    baseline = open_fds()
    try:
        assert probes.start(target(port, interface="lo"), LOOPBACK) is None
        local_port = probes._sockets[("acme-office", 1)].getsockname()[1]
        inject(segment(LOOPBACK, port, LOOPBACK, local_port, ACK))  # filtered out in the kernel
        inject(segment(LOOPBACK, port + 1, LOOPBACK, local_port, SYN | ACK))  # another flow
        time.sleep(0.1)
        watcher = probes._watcher.fileno()
        assert probes.on_ready(watcher) == [] and probes.in_flight() == 1
        inject(segment(LOOPBACK, port, LOOPBACK, local_port, SYN | ACK))
        time.sleep(0.1)
        outcome, = probes.on_ready(watcher)
        assert (outcome.ok, outcome.detail, outcome.slot) == (True, "SYN-ACK", ("acme-office", 1))
        assert probes.in_flight() == 0 and open_fds() == baseline
    finally:
        probes.close()
        for sock in (server, *clients):
            sock.close()
    assert probes._watcher is None


@needs_root
def test_the_watcher_filter_keeps_only_syn_ack_and_rst():
    probes = TcpProbes()
    probes.want_watcher(True)
    try:
        for flags in (ACK, PSH | ACK, SYN, SYN | ACK, RST):
            inject(segment(LOOPBACK, 9, LOOPBACK, 9, flags))
        time.sleep(0.1)
        seen = []
        while True:
            try:
                seen.append(probes._watcher.recv(65535))
            except BlockingIOError:
                break
        flags_seen = sorted(packet[(packet[0] & 0x0F) * 4 + 13] for packet in seen
                            if packet[9] == socket.IPPROTO_TCP and packet[12:16] == socket.inet_aton(LOOPBACK)
                            and struct.unpack_from("!H", packet, (packet[0] & 0x0F) * 4)[0] == 9)
        # The local stack resets what it gets for port 9 (RST, RST-ACK): those come round too.
        assert {SYN | ACK, RST} <= set(flags_seen) <= {SYN | ACK, RST, RST | ACK}, flags_seen
    finally:
        probes.close()


def test_without_bound_probes_there_is_no_watcher():
    probes = TcpProbes()
    probes.want_watcher(False)
    assert probes._watcher is None and probes.poll_fds() == {}


# --- the Prober in a namespace of its own ------------------------------------------------------

# Runs under `unshare --net`: a fresh namespace with only lo. Addresses on lo play the
# far side; 10.9.0.0/16 is unreachable by route, 10.8.0.0/16 has no route at all.
CHILD = r"""
import json, logging, os, socket, subprocess, sys, threading, time
from dataclasses import asdict
from agent.adapters.probe import Prober
from agent.core.health import ProbeTarget

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
for args in (["link", "set", "lo", "up"], ["addr", "add", "172.16.0.2/32", "dev", "lo"],
             ["addr", "add", "10.0.0.20/32", "dev", "lo"], ["addr", "add", "10.0.0.21/32", "dev", "lo"],
             ["addr", "add", "10.0.0.30/32", "dev", "lo"],
             ["route", "add", "unreachable", "10.9.0.0/16"]):
    subprocess.run(["ip", *args], check=True)

def listen(address, backlog=128):
    sock = socket.socket()
    sock.bind((address, 443))
    sock.listen(backlog)
    return sock

servers = [listen("10.0.0.20"), listen("10.0.0.21")]
full = listen("10.0.0.30", 0)
for _ in range(8):  # fill its accept queue: further SYNs are dropped unanswered
    client = socket.socket()
    client.settimeout(0.3)
    servers.append(client)
    try:
        client.connect(("10.0.0.30", 443))
    except socket.timeout:
        break

names = {"app.lab.internal": ["10.0.0.20"], "public.lab.internal": ["198.51.100.7"]}
def fake_getaddrinfo(host, port, family=0, type=0, *rest):
    if host == "slow.lab.internal":
        time.sleep(1.0)
    if host not in names and host != "slow.lab.internal":
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in names.get(host, ["10.0.0.20"])]

def accept_all():
    while True:
        for server in servers[:2]:
            server.setblocking(False)
            try:
                server.accept()[0].close()
            except OSError:
                pass
        time.sleep(0.02)
threading.Thread(target=accept_all, daemon=True).start()

config = json.loads(sys.argv[1])
results = []
fds_before, threads_before = len(os.listdir("/proc/self/fd")), threading.active_count()
prober = Prober(results.append, getaddrinfo=fake_getaddrinfo)
prober.set_targets([ProbeTarget(**t) for t in config["targets"]])
prober.start()
began, peak = time.monotonic(), 0
moved_at = gone_at = None
while time.monotonic() - began < config["seconds"]:
    peak = max(peak, len(os.listdir("/proc/self/fd")))
    if config.get("move_at") and moved_at is None and time.monotonic() - began > config["move_at"]:
        names["app.lab.internal"] = ["10.0.0.21"]
        moved_at = time.monotonic()
    if moved_at and gone_at is None and time.monotonic() - moved_at > 1.5:  # the resolver has caught up
        servers[0].close()
        subprocess.run(["ip", "addr", "del", "10.0.0.20/32", "dev", "lo"], check=True)
        gone_at = time.monotonic()
    time.sleep(0.02)
prober.stop()
time.sleep(0.1)
print(json.dumps({"results": [asdict(r) for r in results], "fds_before": fds_before,
                  # the move closed the listener of 10.0.0.20: not the Prober's
                  "fds_after": len(os.listdir("/proc/self/fd")) + (gone_at is not None), "peak": peak,
                  "threads_before": threads_before, "threads_after": threading.active_count(),
                  "gone_at": gone_at, "began": began}))
"""

needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
                                 reason="needs root, unshare and ip for a private network namespace")


def run_in_netns(targets: list[dict], seconds: float, **extra) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", CHILD,
                           json.dumps({"targets": targets, "seconds": seconds, **extra})],
                          capture_output=True, text=True, timeout=seconds + 20, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def lab_target(key: str, target_: str, port: int | None = 443, **overrides) -> dict:
    fields = dict(key=key, tunnel=1, target=target_, source="172.16.0.2", interface=None,
                  interval=0.1, timeout=0.1, port=port, resolve_interval=1.0)
    fields.update(overrides)
    return fields


def by_key(out: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for result in out["results"]:
        found.setdefault(result["key"], []).append(result)
    return found


@needs_netns
def test_prober_answers_failures_and_resources():
    targets = [
        lab_target("open", "10.0.0.20"),
        lab_target("closed", "10.0.0.20", port=444),
        lab_target("dropped", "10.0.0.30"),
        lab_target("unreachable", "10.9.0.1"),
        lab_target("no-route", "10.8.0.1"),
        lab_target("name", "app.lab.internal"),
        lab_target("icmp", "10.0.0.20", port=None),
        lab_target("slow-name", "slow.lab.internal"),
        lab_target("unknown-name", "nosuch.lab.internal"),
        lab_target("public-name", "public.lab.internal"),
    ]
    out, log = run_in_netns(targets, seconds=1.6)
    results = by_key(out)
    for key in ("open", "closed", "name", "icmp"):
        got = results[key]
        assert len(got) >= 10 and all(r["ok"] and 0 <= r["rtt"] < 0.1 for r in got), (key, got)
    for key in ("dropped", "unreachable", "no-route"):
        got = results[key]
        assert len(got) >= 10 and not any(r["ok"] or r["rtt"] is not None for r in got), (key, got)
    # A name that does not resolve (or only to a public address) posts nothing at all.
    assert "unknown-name" not in results and "public-name" not in results
    assert log.count("probe target nosuch.lab.internal: no IPv4 address: [Errno -2] Name or service not known") == 1
    assert "probe target public.lab.internal: refusing 198.51.100.7" in log
    # The 1 s lookups of slow.lab.internal stalled nobody: the open port kept its cadence.
    sent = [r["sent_at"] for r in results["open"]]
    assert max(b - a for a, b in zip(sent, sent[1:])) < 0.25, sent
    assert results["slow-name"] and all(r["ok"] for r in results["slow-name"])
    # No socket or thread left behind; in flight at most one per target (+ raw ICMP pair, wake pair).
    assert out["fds_after"] == out["fds_before"], out
    assert out["threads_after"] == out["threads_before"], out
    assert out["peak"] <= out["fds_before"] + len(targets) + 4, out
    assert "Traceback" not in log, log


@needs_netns
def test_probes_follow_a_name_that_moves():
    out, log = run_in_netns([lab_target("app", "app.lab.internal")], seconds=3.0, move_at=0.4)
    results = out["results"]
    assert "probe target app.lab.internal moved from 10.0.0.20 to 10.0.0.21" in log, log
    assert out["gone_at"] is not None
    after = [r for r in results if r["sent_at"] > out["gone_at"]]
    assert len(after) >= 7 and all(r["ok"] for r in after), after
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert out["fds_after"] == out["fds_before"]
