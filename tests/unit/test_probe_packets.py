"""ICMP echo packets of the data-path probe, built and parsed without any socket, and
the target checks that keep a probe away from public addresses and bad names."""

from __future__ import annotations

import socket
import struct

import pytest

from agent.adapters.probe import Prober, ProbeTarget, check_target
from agent.adapters.probe_icmp import PAYLOAD, checksum, echo_request, parse_echo_reply


def ipv4_header(src: str, dst: str, payload_len: int, protocol: int = socket.IPPROTO_ICMP,
                options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + payload_len, 0x1234, 0,
                         64, protocol, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def icmp(icmp_type: int, code: int, ident: int, seq: int, payload: bytes = b"abcd") -> bytes:
    body = struct.pack("!BBHHH", icmp_type, code, 0, ident, seq) + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def reply_packet(src: str = "10.0.0.10", ident: int = 0xBEEF, seq: int = 7, **kw) -> bytes:
    message = icmp(0, 0, ident, seq)
    return ipv4_header(src, "172.16.0.2", len(message), **kw) + message


def target(**overrides) -> ProbeTarget:
    fields = dict(key="acme-office", tunnel=1, target="10.0.0.10", source="172.16.0.2",
                  interface="xfrm1", interval=1.0, timeout=0.5)
    fields.update(overrides)
    return ProbeTarget(**fields)


# --- checksum ----------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    # RFC 1071's worked example: sum 0xddf2, checksum its complement.
    (bytes.fromhex("0001f203f4f5f6f7"), 0x220D),
    (b"", 0xFFFF),
    (b"\x00\x00", 0xFFFF),
    (b"\xff\xff", 0x0000),
    # Odd length: padded with a zero byte.
    (b"\x01", 0xFEFF),
    # A carry out of 16 bits is folded back in.
    (b"\xff\xff\x00\x01", 0xFFFE),
])
def test_checksum(data, expected):
    assert checksum(data) == expected


def test_a_packet_with_its_checksum_sums_to_zero():
    assert checksum(echo_request(0x1234, 42, b"odd")) == 0


# --- echo request -------------------------------------------------------------------------

def test_echo_request_layout():
    packet = echo_request(0xABCD, 0x0102, b"hello")
    icmp_type, code, _sum, ident, seq = struct.unpack("!BBHHH", packet[:8])
    assert (icmp_type, code, ident, seq) == (8, 0, 0xABCD, 0x0102)
    assert packet[8:] == b"hello"
    assert checksum(packet) == 0


def test_echo_request_default_payload_and_wrapping():
    packet = echo_request(0x1_0001, 0x1_0002)
    assert struct.unpack("!HH", packet[4:8]) == (1, 2)
    assert packet[8:] == PAYLOAD


# --- echo reply --------------------------------------------------------------------------

def test_parse_echo_reply():
    assert parse_echo_reply(reply_packet()) == ("10.0.0.10", 0xBEEF, 7)


def test_parse_echo_reply_honours_ip_options():
    options = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL: header length 24
    assert parse_echo_reply(reply_packet(seq=9, options=options)) == ("10.0.0.10", 0xBEEF, 9)


@pytest.mark.parametrize("icmp_type, code", [
    (8, 0),   # echo request (a raw socket also sees the ones we send to ourselves)
    (3, 1),   # destination unreachable
    (11, 0),  # time exceeded
    (0, 1),   # echo reply with a nonsense code
])
def test_other_icmp_is_ignored(icmp_type, code):
    message = icmp(icmp_type, code, 0xBEEF, 7)
    assert parse_echo_reply(ipv4_header("10.0.0.10", "172.16.0.2", len(message)) + message) is None


def test_non_icmp_protocol_is_ignored():
    assert parse_echo_reply(reply_packet(protocol=socket.IPPROTO_UDP)) is None


def test_bad_checksum_is_ignored():
    packet = bytearray(reply_packet())
    packet[-1] ^= 0xFF
    assert parse_echo_reply(bytes(packet)) is None


@pytest.mark.parametrize("length", [0, 1, 19, 20, 27])
def test_short_packets_are_ignored(length):
    assert parse_echo_reply(reply_packet()[:length]) is None


def test_bogus_ip_header_is_ignored():
    packet = bytearray(reply_packet())
    packet[0] = 0x60  # IPv6 version nibble
    assert parse_echo_reply(bytes(packet)) is None
    packet[0] = 0x44  # IPv4 with a header length of 16 bytes
    assert parse_echo_reply(bytes(packet)) is None


def test_request_round_trips_through_a_reply():
    request = echo_request(0x4242, 3)
    # The far side answers with type 0 and a recomputed checksum, same ident/seq/payload.
    message = icmp(0, 0, 0x4242, 3, request[8:])
    assert parse_echo_reply(ipv4_header("192.168.1.1", "172.16.0.2", len(message)) + message) == (
        "192.168.1.1", 0x4242, 3)


# --- target checks ----------------------------------------------------------------------

@pytest.mark.parametrize("address", ["10.0.0.10", "10.255.255.254", "172.16.0.1", "172.31.255.1",
                                     "192.168.0.1"])
def test_private_targets_are_accepted(address):
    check_target(target(target=address))


@pytest.mark.parametrize("address", [
    "198.51.100.1",    # lab tunnel endpoint ("public")
    "203.0.113.1",     # lab space side ("public")
    "172.32.0.1",      # just outside 172.16.0.0/12
    "100.64.0.1",      # carrier-grade NAT, not RFC 1918
    "127.0.0.1",
    "fd00::1",
    "",
    "not an address",
    "10.0.0",          # a name cannot end in a number (inet_aton would read 10.0.0.0)
    "0x0a000001",      # 10.0.0.1 in inet_aton's hex notation
    "-app.internal",
    "app..internal",
    "a" * 64 + ".internal",
])
def test_non_private_targets_are_refused(address):
    with pytest.raises(ValueError):
        check_target(target(target=address))


@pytest.mark.parametrize("name", ["app.acme.internal", "not-an-address", "probe-app.herokuapp.com.",
                                  "x" * 63 + ".internal", "a1"])
def test_host_names_are_accepted(name):
    check_target(target(target=name, port=443))
    check_target(target(target=name))


@pytest.mark.parametrize("overrides", [
    {"port": 0},
    {"port": 65536},
    {"port": True},
    {"port": "443"},
    {"target": "app.internal", "resolve_interval": 0.5},
    {"target": "app.internal", "resolve_interval": 7200.0},
    {"source": "nonsense"},
    {"interval": 0.0},
    {"interval": 0.001},
    {"timeout": 0.0},
    {"timeout": -1.0},
])
def test_insane_targets_are_refused(overrides):
    with pytest.raises(ValueError):
        check_target(target(**overrides))


def test_set_targets_refuses_a_public_target_and_keeps_nothing():
    posted: list[object] = []
    prober = Prober(posted.append)
    try:
        with pytest.raises(ValueError, match="198.51.100.2"):
            prober.set_targets([target(), target(key="other", target="198.51.100.2")])
        with pytest.raises(ValueError, match="unique"):
            prober.set_targets([target(), target()])
        # One stream per tunnel of the same connection is the route-mode normal case.
        prober.set_targets([target(), target(tunnel=2, interface="xfrm2")])
        prober.set_targets([])
    finally:
        prober.stop()  # never started: only releases the wake-up sockets
    assert posted == []


def test_two_probers_use_different_identifiers():
    first, second = Prober(lambda _m: None), Prober(lambda _m: None)
    try:
        assert first.ident != second.ident
        assert 0 <= first.ident <= 0xFFFF
    finally:
        first.stop()
        second.stop()
