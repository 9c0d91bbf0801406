"""The pure parts of `space-vpn-lab bench-ha`: VRRP takeover from the notify events, IKE
and CHILD_SA up from a charon log, the traffic gap from per-reply times, the table."""

from __future__ import annotations

import time

import pytest

from space_vpn_lab.bench_report import format_markdown, format_table
from space_vpn_lab.bench_timeline import seconds_of_day
from space_vpn_lab.ha_report import (CHILD_UP, HA_HEADERS, IKE_UP, build_row, established_ms, gap_figures, notes,
                                     retrying_s, takeover_ms, traffic_gap)
from space_vpn_lab.keepalived import VrrpEvent

T0 = 1_800_000_000.0


def test_takeover_is_the_first_master_after_t0():
    events = [VrrpEvent(T0 - 30, "MASTER"), VrrpEvent(T0 - 29, "BACKUP"), VrrpEvent(T0 + 0.612, "MASTER"),
              VrrpEvent(T0 + 5, "MASTER")]
    assert takeover_ms(events, T0) == 612
    assert takeover_ms(events[:2], T0) is None


def charon_line(unix: float, text: str) -> str:
    sod = seconds_of_day(unix)
    hours, rest = divmod(sod, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{seconds:06.3f} 11[IKE] <vpn1|3> {text}"


def test_established_after_t0_from_a_charon_log():
    midday = time.mktime(time.strptime("2026-12-03 12:00:00", "%Y-%m-%d %H:%M:%S"))
    log = "\n".join([
        charon_line(midday - 10, "IKE_SA vpn1[1] established between 203.0.113.10[203.0.113.10]...198.51.100.1"),
        charon_line(midday + 1.0, "initiating Main Mode IKE_SA vpn1[3] to 198.51.100.1"),
        charon_line(midday + 2.5, "IKE_SA vpn1[3] established between 203.0.113.10[203.0.113.10]...198.51.100.1"),
        charon_line(midday + 2.52, "CHILD_SA vpn1{3} established with SPIs c1_i c2_o and TS 172.16.0.0/16"),
    ])
    assert established_ms(log, IKE_UP, midday) == 2500
    assert established_ms(log, CHILD_UP, midday) == 2520
    assert established_ms(log, CHILD_UP, midday + 3) is None


def test_how_long_the_backup_had_been_retrying():
    midday = time.mktime(time.strptime("2026-12-03 12:00:00", "%Y-%m-%d %H:%M:%S"))
    log = "\n".join([charon_line(midday - 12.3, "initiating 'vpn1'"),
                     charon_line(midday - 12.3, "initiating Main Mode IKE_SA vpn1[1] to 198.51.100.1"),
                     charon_line(midday + 0.6, "initiating Main Mode IKE_SA vpn1[2] to 198.51.100.1")])
    assert retrying_s(log, midday) == 12.3
    assert retrying_s(log, midday - 13) is None  # its first attempt came after t0
    assert retrying_s("", midday) is None


def test_notes_give_the_plain_pairs_retry_age_per_run():
    runs = [{"system": "strongswan", "backup_retrying_s": 12.1, "outage_ms": 13096},
            {"system": "strongswan", "backup_retrying_s": 2.0, "outage_ms": 2911},
            {"system": "agent", "error": "RuntimeError: no"}]
    text = notes(runs, 0.01, 0.2)
    assert len(text) == 2 and "advert_int 0.2 s" in text[0]
    assert text[1].endswith("12.1 s -> 13096 ms, 2.0 s -> 2911 ms.")


@pytest.mark.parametrize("replies, expected", [
    # replies every 10 ms, a 2.91 s hole after the power-off
    ([T0 - 0.02, T0 - 0.01, T0 + 2.9, T0 + 2.91], (T0 - 0.01, T0 + 2.9)),
    # one straggler in flight at t0 counts before the hole
    ([T0 - 0.01, T0 + 0.001, T0 + 1.0, T0 + 1.01], (T0 + 0.001, T0 + 1.0)),
    # no reply after t0
    ([T0 - 0.02, T0 - 0.01], (T0 - 0.01, None)),
    ([], (None, None)),
    ([T0 + 1.0], (None, T0 + 1.0)),
])
def test_traffic_gap(replies, expected):
    assert traffic_gap(replies, T0) == pytest.approx(expected)


def test_gap_figures():
    assert gap_figures([T0 - 0.01, T0 + 2.9, T0 + 2.91], T0) == {"outage_ms": 2910, "first_reply_ms": 2900}
    assert gap_figures([T0 - 0.01], T0) == {"outage_ms": None, "first_reply_ms": None}


def test_rows_and_table():
    ok = {"system": "strongswan", "ms_lost": 12996, "outage_ms": 13096, "vrrp_takeover_ms": 533,
          "ike_up_ms": 13039, "child_up_ms": 13055, "first_reply_ms": 13078, "cap_s": 90}
    never = {**ok, "system": "agent", "outage_ms": None, "first_reply_ms": None, "child_up_ms": None}
    failed = {"system": "agent", "error": "RuntimeError: the agent on gw1 exited\nmore", "cap_s": 90}
    rows = [build_row(r) for r in (ok, never, failed)]
    assert rows[0] == {"system": "strongswan", "ms_lost": "12996", "outage": "13096 ms", "vrrp": "533 ms",
                       "ike": "13039 ms", "child": "13055 ms", "first_reply": "13078 ms"}
    assert rows[1]["outage"] == "never (> 90 s)" and rows[1]["child"] == "never"
    assert rows[2] == {"system": "agent", "ms_lost": "error", "error": "RuntimeError: the agent on gw1 exited"}
    table = format_table(rows, HA_HEADERS)
    assert table.splitlines()[0].split()[:3] == ["system", "ms", "lost"]
    assert "  12996  13096 ms" in table
    markdown = format_markdown(rows, ["how it was measured"], HA_HEADERS)
    assert markdown.startswith("| system | ms lost | outage | VRRP takeover |")
    assert "|---|---:|" in markdown
