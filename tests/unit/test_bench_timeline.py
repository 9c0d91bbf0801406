"""The DELETE timeline of bench scenario b, from log lines as charon and the agent write them."""

from __future__ import annotations

import json

from space_vpn_lab.bench_timeline import (
    TimedPinger,
    after_delete,
    describe,
    line_time,
    ping_timeline,
    reply_gaps,
    reply_times,
    traffic_back_s,
)

SPACE = """\
22:33:58.101 12[IKE] <space-t1|2> closing CHILD_SA space-t1{0} with SPIs 1_i 2_o (a rekey long before)
22:33:59.485 16[CFG] vici terminate IKE_SA 'space-t1'
22:33:59.493 12[IKE] <space-t1|2> closing CHILD_SA space-t1{1} with SPIs c60d1c23_i (16168 bytes) ca1ec855_o
22:33:59.507 12[NET] <space-t1|2> sending packet: from 198.51.100.1[500] to 203.0.113.10[500] (92 bytes)
"""
CUSTOMER = """\
22:33:59.510 09[NET] <svpn-acme-space-office-t1|1> received packet: from 198.51.100.1[500] (92 bytes)
22:33:59.511 09[IKE] <svpn-acme-space-office-t1|1> received DELETE for ESP CHILD_SA with SPI c60d1c23
"""
AGENT = """\
2026-11-28 22:33:58,002 INFO agent.daemon.reconciler: route 10.0.0.0/16 dev sv-1 metric 100 src 172.16.0.2
2026-11-28 22:33:59,526 INFO agent.daemon.fast_reroute: acme-space/office: tunnel 1's CHILD_SA went down: \
routed via tunnel 2 in 0.9 ms
"""
AFTER = line_time("22:33:59.000 ") or 0.0


def test_line_times_of_both_formats():
    assert line_time("22:33:59.493 12[IKE] x") == 22 * 3600 + 33 * 60 + 59.493
    assert line_time("2026-11-28 22:33:59,526 INFO x") == 22 * 3600 + 33 * 60 + 59.526
    assert line_time("no time here") is None


def test_timeline_counts_from_the_far_end_closing_its_child():
    assert after_delete(SPACE, CUSTOMER, AGENT, AFTER) == {"delete_received_ms": 18, "rerouted_ms": 33}
    assert after_delete(SPACE, CUSTOMER, None, AFTER) == {"delete_received_ms": 18}
    assert after_delete(SPACE, "", AGENT, AFTER) is None  # no DELETE seen: no figures


def test_description_names_both_stretches():
    run = {"mode": "route", "system": "agent", "after_delete": {"delete_received_ms": 18, "rerouted_ms": 33}}
    assert describe(run) == ("route b agent: our charon received the DELETE 18 ms after the far end closed its "
                             "CHILD_SA; the route had moved 15 ms later.")
    assert describe({"mode": "route", "system": "agent"}) is None


PING_D = """\
PING 10.0.0.10 (10.0.0.10) from 172.16.0.2 : 56(84) bytes of data.
[1764741600.101000] 64 bytes from 10.0.0.10: icmp_seq=1 ttl=63 time=0.412 ms
[1764741600.113500] 64 bytes from 10.0.0.10: icmp_seq=2 ttl=63 time=0.388 ms
From 172.16.0.1 icmp_seq=3 Destination Net Unreachable
[1764741607.250250] 64 bytes from 10.0.0.10: icmp_seq=540 ttl=63 time=0.501 ms

--- 10.0.0.10 ping statistics ---
540 packets transmitted, 3 received, 99.4444% packet loss, time 7149ms
"""


def test_reply_times_from_ping_d_output():
    assert reply_times(PING_D) == [1764741600.101, 1764741600.1135, 1764741607.25025]
    assert reply_times("") == []


def test_reply_gaps_count_by_sequence_number():
    (gap,) = reply_gaps(PING_D)
    assert (gap.lost, gap.ms) == (537, 7137)
    assert reply_gaps("") == []


def test_traffic_back_is_the_first_reply_after_the_event():
    replies = reply_times(PING_D)
    assert traffic_back_s(replies, 1764741606.0) == 1.25
    assert traffic_back_s(replies, 1764741600.0) == 0.101
    assert traffic_back_s(replies, 1764741608.0) is None


T0 = 1764741600.0  # the run's first ping


def test_ping_timeline_keeps_the_window_and_the_gaps_from_t0():
    timeline = ping_timeline(PING_D, T0, T0 - 0.002, T0 + 7.3, sent=540)
    assert timeline == {"ping_window": [0.101, 7.25], "ping_gaps": [[0.114, 7.25, 537]]}
    assert json.loads(json.dumps(timeline)) == timeline  # the record is JSON


def test_ping_timeline_bounds_losses_before_the_first_and_after_the_last_reply():
    text = PING_D.replace("icmp_seq=1 ", "icmp_seq=4 ").replace("icmp_seq=2 ", "icmp_seq=5 ")
    timeline = ping_timeline(text, T0, T0 - 0.002, T0 + 7.3, sent=545)
    # 545 sent, the last reply was seq 540: 541-544 lost, 545 was in flight at the stop.
    assert timeline["ping_gaps"] == [[-0.002, 0.101, 3], [0.114, 7.25, 534], [7.25, 7.3, 4]]
    assert sum(lost for _after, _before, lost in timeline["ping_gaps"]) == 545 - 3 - 1
    just_stopped = ping_timeline(PING_D, T0, T0 - 0.002, T0 + 7.26, sent=541)
    assert just_stopped["ping_gaps"] == [[0.114, 7.25, 537]]  # 541 in flight: nothing after the last reply


def test_ping_timeline_without_replies_is_one_gap_or_nothing():
    assert ping_timeline("", T0, T0, T0 + 5.0, sent=500) == {"ping_window": None, "ping_gaps": [[0.0, 5.0, 500]]}
    assert ping_timeline("", T0, T0, T0 + 5.0, sent=0) == {"ping_window": None, "ping_gaps": []}


def test_timed_pinger_asks_ping_for_one_timestamped_line_per_reply(tmp_path):
    pinger = TimedPinger("ns", "172.16.0.2", "10.0.0.10", 100, 0.01, output=tmp_path / "ping.out")
    assert "-D" in pinger._argv and "-q" not in pinger._argv
