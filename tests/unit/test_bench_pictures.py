"""The benchmarks' pictures from synthetic records (no lab): rows, marks, files, PNGs."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib.image
import pytest

from space_vpn_lab import bench_pictures as pictures
from space_vpn_lab.bench_pictures import Mark, MarkKind
from space_vpn_lab.bench_timeline import ping_timeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1764741600.0
DROPPED = "space: tunnel 1 silently dropped (blackhole, SA forgotten)"


def _run(system, scenario="a", gaps=((2.0, 2.6, 60),), attempt=1, **overrides):
    run = {"mode": "policy", "scenario": scenario, "scenario_name": "silent", "system": system, "attempt": attempt,
           "interval_s": 0.01, "t0_unix": T0, "ms_lost": sum(g[2] for g in gaps) * 10, "error": None,
           "ping_window": [0.01, 44.99], "ping_gaps": [list(g) for g in gaps], "failovers": [],
           "events": [{"t_s": 2.0, "event": DROPPED}, {"t_s": 12.0, "event": "space: tunnel 1 blackhole lifted"},
                      {"t_s": 14.2, "event": "redundancy restored"},
                      {"t_s": 45.0, "event": "traffic stopped: 4440/4500 replies"}]}
    run.update(overrides)
    return run


def _ha_run(system, lost_until_s, attempt=1):
    return {"system": system, "attempt": attempt, "scenario": "master power-off", "interval_s": 0.01,
            "advert_int_s": 0.2, "t0_unix": T0, "ms_lost": round(lost_until_s * 1000), "error": None,
            "vrrp_takeover_ms": 610, "child_up_ms": round(lost_until_s * 1000) - 14,
            "ping_window": [-1.0, lost_until_s + 2.0], "ping_gaps": [[-0.004, lost_until_s, round(lost_until_s * 100)]]}


def _image_rows(path):
    """Pixel rows of the PNG, after checking it is one."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


@pytest.mark.parametrize("window, gaps, expected", [
    ([0.0, 10.0], [], [(0.0, 10.0)]),
    ([0.0, 10.0], [[2.0, 2.5, 49], [6.0, 7.0, 99]], [(0.0, 2.0), (2.5, 6.0), (7.0, 10.0)]),
    ([1.0, 10.0], [[-0.002, 1.0, 100], [9.0, 9.5, 49], [10.0, 10.4, 40]], [(1.0, 9.0), (9.5, 10.0)]),  # head, tail
    (None, [[0.0, 5.0, 500]], []),
])
def test_received_spans_are_the_window_less_its_gaps(window, gaps, expected):
    assert pictures.received_spans(window, gaps) == expected


@pytest.mark.parametrize("event, expected", [
    (DROPPED, "space: tunnel 1 silently dropped"),
    ("API tunnel 1 DOWN (no effect on plain strongSwan)", "API tunnel 1 DOWN"),
    ("swanctl --initiate --child vpn2; swanctl --terminate --child vpn1",
     "swanctl --initiate --child vpn2\nswanctl --terminate --child vpn1"),
    ("x" * 60, "x" * 41 + "…"),
])
def test_short_labels(event, expected):
    assert pictures.short_label(event) == expected


def test_bench_row_has_the_events_the_restore_and_the_failovers_of_the_run():
    failovers = [{"at": T0 - 20.0, "from_tunnel": 2, "to_tunnel": 1, "reason": "start-up", "kind": "down"},
                 {"at": T0 + 2.61, "from_tunnel": 1, "to_tunnel": 2, "reason": "probe lost", "kind": "probe"}]
    row = pictures.bench_row(_run("agent", failovers=failovers))
    assert row.label == "agent\n600 ms lost"
    assert row.received == ((0.01, 2.0), (2.6, 44.99)) and row.lost == ((2.0, 2.6),)
    assert row.marks == (Mark(2.0, "space: tunnel 1 silently dropped"), Mark(12.0, "space: tunnel 1 blackhole lifted"),
                         Mark(14.2, "redundancy restored", MarkKind.RESTORED),
                         Mark(2.61, "failover 1→2 (probe)", MarkKind.FAILOVER))
    assert row.no_data is None


@pytest.mark.parametrize("overrides, reason", [
    ({"error": "BenchError: charon did not come up\ntraceback", "ms_lost": None, "ping_gaps": None},
     "no data: BenchError: charon did not come up"),
    ({"ping_gaps": None}, "no data: no per-ping timeline in this record"),
])
def test_a_run_without_a_timeline_is_no_data(overrides, reason):
    run = _run("strongswan", **overrides)
    if run["ping_gaps"] is None:
        del run["ping_gaps"]
    row = pictures.bench_row(run)
    assert row.no_data == reason and row.received == row.lost == row.marks == ()


def test_the_agent_is_drawn_above_plain_strongswan_and_repeats_are_numbered():
    runs = [_run("strongswan"), _run("agent"), _run("strongswan", attempt=2), _run("agent", attempt=2)]
    assert [(r["system"], r["attempt"]) for r in pictures.ordered(runs)] == [
        ("agent", 1), ("agent", 2), ("strongswan", 1), ("strongswan", 2)]
    assert pictures.bench_row(runs[2], numbered=True).label == "plain strongSwan #2\n600 ms lost"


def test_one_png_per_scenario_with_a_row_per_system(tmp_path):
    runs = [_run("agent"), _run("strongswan", gaps=((2.0, 34.0, 3200),)),
            _run("agent", scenario="b"), _run("strongswan", scenario="b")]
    paths = pictures.write_bench_pictures(runs, tmp_path)
    assert paths == [tmp_path / "bench-policy-a.png", tmp_path / "bench-policy-b.png"]
    image = _image_rows(paths[0])
    rows_in = pictures.HEADER_IN + 2 * pictures.ROW_IN + pictures.FOOTER_IN
    assert image.shape[:2] == (round(rows_in * pictures.DPI), round(pictures.WIDTH_IN * pictures.DPI))
    red = (abs(image[..., 0] - 0xd6 / 255) < 0.02) & (abs(image[..., 1] - 0x27 / 255) < 0.02)
    assert red.sum() > 1000  # strongSwan's 32 s of loss


def test_pictures_are_the_same_bytes_for_the_same_records(tmp_path):
    runs = [_run("agent"), _run("strongswan")]
    written = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (path,) = pictures.write_bench_pictures(runs, tmp_path / name)
        written.append(path.read_bytes())
    assert written[0] == written[1]


def test_errored_and_old_records_still_give_a_picture(tmp_path):
    old = _run("strongswan")
    del old["ping_gaps"], old["ping_window"]
    errored = {"mode": "policy", "scenario": "a", "scenario_name": "silent", "system": "agent",
               "interval_s": 0.01, "ms_lost": None, "events": [], "error": "RuntimeError: lab failed to start"}
    (path,) = pictures.write_bench_pictures([errored, old], tmp_path)
    assert _image_rows(path).shape[1] == round(pictures.WIDTH_IN * pictures.DPI)


def test_ha_picture_has_a_row_per_run_from_the_power_off(tmp_path):
    runs = [_ha_run("strongswan", 13.1), _ha_run("agent", 0.74),
            _ha_run("strongswan", 13.0, 2), _ha_run("agent", 0.77, 2)]
    path = pictures.write_ha_picture(runs, tmp_path / "bench-ha.png")
    rows_in = pictures.HEADER_IN + 4 * pictures.ROW_IN + pictures.FOOTER_IN
    assert _image_rows(path).shape[0] == round(rows_in * pictures.DPI)
    row = pictures.ha_row(runs[1])
    assert row.label == "agent\n740 ms lost" and row.lost == ((-0.004, 0.74),)
    assert [m.label for m in row.marks] == ["master powered off", "VRRP takeover", "CHILD_SA up"]


PING_D = """\
PING 10.0.0.10 (10.0.0.10) from 172.16.0.2 : 56(84) bytes of data.
[1764741600.010000] 64 bytes from 10.0.0.10: icmp_seq=1 ttl=63 time=0.412 ms
[1764741602.000000] 64 bytes from 10.0.0.10: icmp_seq=200 ttl=63 time=0.388 ms
[1764741602.600000] 64 bytes from 10.0.0.10: icmp_seq=261 ttl=63 time=0.501 ms
[1764741644.990000] 64 bytes from 10.0.0.10: icmp_seq=4500 ttl=63 time=0.501 ms

--- 10.0.0.10 ping statistics ---
4500 packets transmitted, 4 received, 99.9% packet loss, time 45000ms
"""


def test_from_ping_output_to_the_row(tmp_path):
    """ping -D text -> the record's ping_gaps -> the row: the loss by sequence number."""
    timeline = ping_timeline(PING_D, T0, T0 - 0.001, T0 + 45.0, sent=4500)
    gaps = timeline["ping_gaps"]
    assert gaps[1] == [2.0, 2.6, 60] and timeline["ping_window"] == [0.01, 44.99]
    row = pictures.bench_row(_run("agent", **timeline))
    assert (2.0, 2.6) in row.lost and row.received[0] == (0.01, 0.01)
    assert pictures.write_bench_pictures([_run("agent", **timeline)], tmp_path)[0].exists()


def test_importing_the_bench_does_not_import_matplotlib():
    code = "import sys, space_vpn_lab.bench, space_vpn_lab.bench_ha; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=os.environ, timeout=60, check=False)
    assert result.stdout.strip() == "False", result.stderr[-2000:]
