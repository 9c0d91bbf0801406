"""The split-brain guard: the ARP codec (adapters/arp), the decision (core/ha.split_brain),
the plan that follows from it, and the track file keepalived reads."""

from __future__ import annotations

import ipaddress
import logging
import struct
from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from agent.adapters.arp import FRAME_LEN, mac_bytes, mac_text, probe_frame, replier, vrrp_source
from agent.adapters.yield_file import YieldFile
from agent.core.charon_objects import TerminateIke
from agent.core.ha import PROBE_STALE_S, WINNER_SILENT_S, HaState, SplitBrain, VipProbe, split_brain
from agent.core.observation import CharonState
from agent.core.pass_plan import plan_pass
from agent.core.snapshot import Health
from tests.unit.test_ha import HELD, VIP, ha_record
from tests.unit.test_pass_plan import T1, T2, inputs, loaded_fingerprints, up

OURS = "02:00:00:00:00:22"
LOWER = "02:00:00:00:00:11"
HIGHER = "02:00:00:00:00:33"


def arp_frame(op: int, sender_mac: str, sender_ip: str, target_ip: str = VIP, ethertype: int = 0x0806) -> bytes:
    sha = mac_bytes(sender_mac)
    return (b"\xff" * 6 + sha + struct.pack("!H", ethertype)
            + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, ipaddress.IPv4Address(sender_ip).packed,
                          b"\0" * 6, ipaddress.IPv4Address(target_ip).packed))


# --- the codec ----------------------------------------------------------------------------

def test_the_probe_asks_for_the_address_from_nowhere():
    frame = probe_frame(OURS, VIP)
    assert len(frame) == FRAME_LEN
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac_bytes(OURS)
    assert frame[28:32] == b"\0\0\0\0"  # sender 0.0.0.0: no cache learns anything from it (RFC 5227)
    assert frame[38:42] == ipaddress.IPv4Address(VIP).packed
    # Our own probe, captured on the way out, is nobody's claim.
    assert replier(frame, VIP, OURS) is None


@pytest.mark.parametrize("op", [1, 2])  # a reply, or a (gratuitous) request from the holder
def test_a_claim_from_another_host_names_its_mac(op):
    assert replier(arp_frame(op, LOWER, VIP), VIP, OURS) == LOWER
    assert replier(arp_frame(op, OURS, VIP), VIP, OURS.upper()) is None
    assert replier(arp_frame(op, LOWER, "203.0.113.11"), VIP, OURS) is None  # another address
    assert replier(arp_frame(op, LOWER, VIP, ethertype=0x0800), VIP, OURS) is None
    assert replier(arp_frame(op, LOWER, VIP)[:FRAME_LEN - 1], VIP, OURS) is None


@given(st.binary(max_size=128))
def test_any_bytes_are_a_claim_or_nothing(frame):
    result = replier(frame, VIP, OURS)
    assert result is None or (len(frame) >= FRAME_LEN and mac_bytes(result) == frame[22:28])


@given(st.binary(min_size=6, max_size=6))
def test_mac_text_round_trips(raw):
    assert mac_bytes(mac_text(raw)) == raw


@pytest.mark.parametrize("text", ["", "aa:bb", "aa:bb:cc:dd:ee:ff:00", "aabbccddeeff", "zz:bb:cc:dd:ee:ff"])
def test_mac_bytes_refuses_what_is_not_a_mac(text):
    with pytest.raises(ValueError):
        mac_bytes(text)


def vrrp_packet(source: str, proto: int = 112, ihl: int = 5) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 40, 0, 0, 255, proto, 0,
                         ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address("224.0.0.18").packed)
    return header + b"\0" * (4 * ihl - 20) + b"\x31\x0a\x96\x01" + b"\0" * 12


def test_vrrp_source():
    assert vrrp_source(vrrp_packet("203.0.113.12")) == "203.0.113.12"
    assert vrrp_source(vrrp_packet("203.0.113.12", ihl=6)) == "203.0.113.12"
    assert vrrp_source(vrrp_packet("203.0.113.12", proto=6)) is None
    assert vrrp_source(vrrp_packet("203.0.113.12", ihl=4)) is None
    assert vrrp_source(vrrp_packet("203.0.113.12")[:20]) is None


@given(st.binary(max_size=64))
def test_any_bytes_are_a_vrrp_source_or_nothing(packet):
    source = vrrp_source(packet)
    assert source is None or ipaddress.IPv4Address(source).packed == packet[12:16]


# --- the decision -------------------------------------------------------------------------

def probe(at: float, *others: str, vrrp_heard_at: float | None = None) -> VipProbe:
    return VipProbe(at, OURS, frozenset(others), vrrp_heard_at)


def test_the_higher_mac_yields_after_two_probes_in_a_row():
    first = split_brain(None, probe(10.0, LOWER), holds=True, now=10.0)
    assert first == SplitBrain(LOWER, 10.0, 10.0, yielding=False)
    # The same probe looked at again (a pass between probes) is not a second look.
    assert split_brain(first, probe(10.0, LOWER), holds=True, now=10.5) == first
    second = split_brain(first, probe(11.0, LOWER), holds=True, now=11.0)
    assert second == SplitBrain(LOWER, 10.0, 11.0, yielding=True)
    assert "split brain" in second.describe(VIP) and LOWER in second.describe(VIP)


def test_the_lower_mac_keeps_the_address_and_a_handover_overlap_is_forgiven():
    assert split_brain(None, probe(10.0, HIGHER), holds=True, now=10.0) is None
    # Seen once, gone at the next probe: keepalived's handover, not a split brain.
    first = split_brain(None, probe(10.0, LOWER), holds=True, now=10.0)
    assert split_brain(first, probe(11.0), holds=True, now=11.0) is None
    # A node without the address has nothing to yield.
    assert split_brain(None, probe(10.0, LOWER), holds=False, now=10.0) is None


def yielded() -> SplitBrain:
    return SplitBrain(LOWER, 10.0, 11.0, yielding=True)


def test_a_yield_lasts_while_the_winner_answers_even_without_the_address():
    assert split_brain(yielded(), probe(12.0, LOWER), holds=False, now=12.0) == replace(yielded(), last_seen=12.0)
    # Silent for a moment: still out; silent for WINNER_SILENT_S: the winner is gone.
    assert split_brain(yielded(), probe(12.0), holds=False, now=11.0 + WINNER_SILENT_S) == yielded()
    assert split_brain(yielded(), probe(15.0), holds=False, now=11.1 + WINNER_SILENT_S) is None


def test_vrrp_adverts_back_end_the_yield():
    before_the_split = probe(12.0, LOWER, vrrp_heard_at=9.0)
    assert split_brain(yielded(), before_the_split, holds=False, now=12.0).yielding
    assert split_brain(yielded(), probe(12.0, LOWER, vrrp_heard_at=11.5), holds=False, now=12.0) is None


def test_no_fresh_probe_no_yield():
    """The guard stopped: fighting is better than leaving no master at all."""
    assert split_brain(yielded(), None, holds=False, now=12.0) is None
    assert split_brain(yielded(), probe(12.0, LOWER), holds=False, now=12.1 + PROBE_STALE_S) is None


# --- the plan -----------------------------------------------------------------------------

def test_a_yielding_master_stands_by_and_the_plan_says_yield():
    rec = ha_record()
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    rec = replace(rec, memory=replace(rec.memory, split_brain=SplitBrain(LOWER, 99.0, 99.0, yielding=False)))
    plan = plan_pass(replace(inputs(rec, charon=charon, net=HELD, loaded=loaded_fingerprints(rec)),
                             vip_probes={VIP: probe(100.0, LOWER)}))
    (step,) = plan.steps
    assert plan.yielding and step.memory.split_brain.yielding
    assert step.memory.ha[0] is HaState.FAULT and "split brain" in step.memory.ha[1]
    assert step.memory.verdict[0] is Health.DEGRADED and "split brain" in step.memory.verdict[1]
    assert [type(a) for a in step.charon_actions] == [TerminateIke, TerminateIke]
    assert plan.probe_targets == ()


def test_the_winner_keeps_running():
    rec = ha_record()
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    plan = plan_pass(replace(inputs(rec, charon=charon, net=HELD, loaded=loaded_fingerprints(rec)),
                             vip_probes={VIP: probe(100.0, HIGHER)}))
    assert not plan.yielding and plan.steps[0].memory.ha[0] is HaState.MASTER
    assert not any(isinstance(a, TerminateIke) for a in plan.steps[0].charon_actions)


# --- the track file -----------------------------------------------------------------------

def test_the_yield_file_says_what_the_plan_says_whoever_wrote_it_last(tmp_path, caplog):
    path = tmp_path / "ha-yield"
    path.write_text("1\n")  # left behind by an agent that yielded, then died
    track = YieldFile(str(path))
    track.sync(False)
    assert path.read_text() == "0\n"
    with caplog.at_level(logging.WARNING):
        track.sync(True)
    assert path.read_text() == "1\n" and "yielding" in caplog.text
    path.write_text("0\n")  # keepalived restarted (init_file 0 overwrite)
    track.sync(True)
    assert path.read_text() == "1\n"
    path.unlink()
    track.sync(False)
    assert path.read_text() == "0\n"


def test_an_unwritable_yield_file_is_an_error_not_a_crash(tmp_path, caplog):
    track = YieldFile(str(tmp_path / "missing-dir" / "ha-yield"))
    with caplog.at_level(logging.ERROR):
        track.sync(True)
        track.sync(True)
    assert "ha.yield_file" in caplog.text and caplog.text.count("cannot write") == 1


def test_a_look_that_finds_no_one_else_again_waits_for_the_tick():
    """The guard posts a look every second: only one that can change a decision gets a pass."""
    from agent.adapters.vip_guard import VipProbed
    from agent.daemon.loop_state import LoopState, quiet

    rec = ha_record()
    state = LoopState(config=None, records={rec.key: rec})
    assert not quiet(state, VipProbed(VIP, probe(10.0)))  # the first look
    state.vip_probes[VIP] = probe(10.0)
    assert quiet(state, VipProbed(VIP, probe(11.0)))
    assert not quiet(state, VipProbed(VIP, probe(11.0, LOWER)))  # someone else answers
    state.vip_probes[VIP] = probe(11.0, LOWER)
    assert not quiet(state, VipProbed(VIP, probe(12.0)))  # and stopped answering
    state.vip_probes[VIP] = probe(12.0)
    state.records[rec.key] = replace(rec, memory=replace(rec.memory, split_brain=yielded()))
    assert not quiet(state, VipProbed(VIP, probe(13.0)))  # a yield may end on this look
