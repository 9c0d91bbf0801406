"""Pure parts of the soak report: ping -D read line by line, resource trends, the agent's
unexpected warnings, rekeys in charon's log, and the document with its markdown."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, strategies as st

from space_vpn_lab.soak_document import document, losses, markdown, resources
from space_vpn_lab.soak_plan import LossRun, plan_soak
from space_vpn_lab.soak_report import anomalies, count_rekeys, cpu_per_hour, scan_ping, segment_losses, slope, trend

T0 = 1764741600.0


def reply(seq: int, at: float) -> str:
    return f"[{at:.6f}] 64 bytes from 10.0.0.10: icmp_seq={seq} ttl=63 time=0.4 ms\n"


def ping_output(seqs: list[int], spacing: float = 0.01, transmitted: int | None = None) -> list[str]:
    lines = ["PING 10.0.0.10 (10.0.0.10) from 172.16.0.2 : 56(84) bytes of data.\n"]
    lines += [reply(s, T0 + s * spacing) for s in seqs]
    if transmitted is not None:
        lines += ["\n", f"--- 10.0.0.10 ping statistics ---\n",
                  f"{transmitted} packets transmitted, {len(seqs)} received, 1% packet loss, time 999ms\n"]
    return lines


def test_scan_finds_the_runs_of_lost_pings_by_sequence():
    scan = scan_ping(ping_output([1, 2, 3, 40, 41, 43], transmitted=45))
    assert scan.replies == 6 and scan.transmitted == 45 and scan.last_seq == 43
    assert [(round(a - T0, 2), round(b - T0, 2), n) for a, b, n in scan.runs] == [(0.03, 0.4, 36), (0.41, 0.43, 1)]


def test_a_segment_that_ended_by_its_count_counts_its_unanswered_tail():
    scan = scan_ping(ping_output([1, 2, 3], transmitted=5))
    sent, received, runs = segment_losses(scan, T0, T0 + 2.0, interrupted=False, t0_unix=T0)
    assert (sent, received) == (5, 3) and runs[-1] == LossRun(0.03, 2.0, 2)


def test_an_interrupted_segment_leaves_out_echoes_that_may_be_on_their_way():
    scan = scan_ping(ping_output([1, 2, 3], transmitted=4))
    assert segment_losses(scan, T0, T0 + 0.3, interrupted=True, t0_unix=T0)[:2] == (3, 3)
    # ... but not an outage that was going on for longer than ping's -W
    sent, _received, runs = segment_losses(scan, T0, T0 + 5.0, interrupted=True, t0_unix=T0)
    assert sent == 4 and runs == [LossRun(0.03, 5.0, 1)]


def test_pings_lost_before_the_first_reply_count_from_pings_start():
    scan = scan_ping(ping_output([5, 6], transmitted=6))
    _sent, _received, runs = segment_losses(scan, T0 - 1.0, T0 + 1.0, interrupted=False, t0_unix=T0)
    assert runs == [LossRun(-1.0, 0.05, 4)]


def test_no_reply_at_all_is_one_run_over_the_whole_segment():
    scan = scan_ping(ping_output([], transmitted=100))
    assert segment_losses(scan, T0, T0 + 3.0, interrupted=False, t0_unix=T0) == (100, 0, [LossRun(0.0, 3.0, 100)])


# --- trends ----------------------------------------------------------------------------------------

def test_slope_is_least_squares_per_second():
    assert slope([(0, 1.0), (10, 2.0), (20, 3.0)]) == pytest.approx(0.1)
    assert slope([(5, 1.0)]) == 0.0


def test_a_flat_series_with_noise_is_flat():
    points = [(t * 10.0, 30000.0 + (7 if t % 2 else -7)) for t in range(60)]
    found = trend(points, tolerance=2048)
    assert found.verdict == "flat within noise" and found.first == 29993 and found.max == 30007


def test_a_steady_growth_is_reported_per_hour():
    points = [(t * 10.0, 30000.0 + t * 100) for t in range(360)]  # 36 MiB/h of RSS
    found = trend(points, tolerance=2048)
    assert found.verdict == "grows 3.6e+04/h" and found.slope_per_h == pytest.approx(36000)


def test_growth_only_at_start_up_is_warm_up_not_a_leak():
    points = [(t * 10.0, 30000.0 + min(t, 20) * 200) for t in range(120)]
    assert trend(points, tolerance=2048).verdict == "flat within noise"


def test_one_more_thread_for_good_is_within_the_tolerance():
    points = [(t * 10.0, 6.0 if t < 50 else 7.0) for t in range(100)]
    assert trend(points, tolerance=1).verdict == "flat within noise"
    assert trend([], tolerance=1) is None


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(0, 1e6))
def test_a_constant_series_is_always_flat(times, value):
    points = [(t, value) for t in sorted(times)]
    assert trend(points, tolerance=0).verdict == "flat within noise"


def test_cpu_seconds_per_hour():
    samples = [{"t_s": 0, "cpu_s": 1.0}, {"t_s": 1800, "cpu_s": 31.0}]
    assert cpu_per_hour(samples) == 60.0
    assert cpu_per_hour(samples[:1]) is None


# --- the agent's log --------------------------------------------------------------------------------

def stamp(t_s: float) -> str:
    moment = datetime.datetime.fromtimestamp(T0 + t_s)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f",{round((T0 + t_s) % 1 * 1000):03d}"


LOG = [
    f"{stamp(1)} INFO agent.daemon.main: started\n",
    f"{stamp(101)} WARNING agent.daemon.loop_state: acme-space/office: tunnel 1 lost 3 probes in a row\n",
    f"{stamp(101.2)} WARNING agent.daemon.edges: acme-space/office: failover from tunnel 1 to tunnel 2: 3 probes lost\n",
    f"{stamp(103)} WARNING agent.daemon.edges: InitiateAction failed: charon: establishing CHILD_SA failed\n",
    f"{stamp(104)} ERROR agent.daemon.controller: reconcile pass failed; continuing\n",
    "Traceback (most recent call last):\n",
    f"{stamp(300)} WARNING agent.daemon.edges: acme-space/office: failover from tunnel 2 to tunnel 1: IKE SA down\n",
]


def test_anomalies_are_warnings_no_event_explains():
    count, found = anomalies(LOG, [(99.0, 130.0)], T0)
    assert count == 2
    assert [(f["t_s"], f["level"], f["where"]) for f in found] == [(104.0, "ERROR", "during an event"),
                                                                   (300.0, "WARNING", "outside events")]
    assert found[1]["line"].endswith("failover from tunnel 2 to tunnel 1: IKE SA down")


def test_anomalies_keep_a_bounded_list_and_count_all():
    lines = [f"{stamp(i)} ERROR agent.x: boom {i}\n" for i in range(10)]
    count, found = anomalies(lines, [], T0, keep=3)
    assert count == 10 and len(found) == 3


# --- rekeys -----------------------------------------------------------------------------------------

CHARON = """\
10:00:01.000 12[IKE] <t1|1> detected rekeying of CHILD_SA t1{1}
10:00:01.001 12[IKE] <t1|1> CHILD_SA t1{2} established with SPIs c1_i c2_o and TS 172.16.0.0/16 === 10.0.0.0/16
10:05:00.000 13[IKE] <t1|1> scheduling reauthentication in 28375s
"""


def test_rekeys_answered_counted_in_charons_log():
    assert count_rekeys(CHARON.splitlines()) == {"child_rekeys_answered": 1}
    assert count_rekeys([]) == {"child_rekeys_answered": 0}


# --- the document -----------------------------------------------------------------------------------

PLAYED = [{"index": 0, "at_s": 11.7, "kind": "silent", "role": "active", "tunnel": 1, "down_s": 9.2, "error": None,
           "started_s": 11.72, "restored_s": 20.95},
          {"index": 1, "at_s": 29.7, "kind": "graceful", "role": "active", "tunnel": 2, "down_s": 6.3,
           "error": None, "started_s": 29.75, "restored_s": 36.1}]
FAILOVERS = [{"at": T0 + 12.05, "from_tunnel": 1, "to_tunnel": 2, "kind": "probe", "t_s": 12.05},
             {"at": T0 + 29.76, "from_tunnel": 2, "to_tunnel": 1, "kind": "down", "t_s": 29.76}]
RUNS = [LossRun(11.7, 12.1, 28), LossRun(29.74, 29.76, 1), LossRun(80.0, 80.02, 1)]


def test_losses_per_event_and_outside():
    found = losses(PLAYED, RUNS, sent=4000, spacing_s=0.0125, failovers=FAILOVERS, stopped_s=100.0)
    first, second = found["events"]
    assert (first["lost"], first["ms_lost"], first["traffic_back_s"], first["recovered"]) == (28, 350, 0.38, True)
    assert [f["kind"] for f in first["failovers"]] == ["probe"] and second["lost"] == 1
    assert found["outside"]["lost"] == 1 and found["outside"]["ms_lost"] == 12 and found["outside"]["failovers"] == []
    assert found["outside_share"] == 1 / 4000 and found["goal_met"] is True
    assert (found["in_events_lost"], found["total_lost"]) == (29, 30)


def test_an_event_whose_loss_lasts_until_the_stop_did_not_recover():
    found = losses(PLAYED[:1], [LossRun(11.7, 60.0, 3800)], sent=4000, spacing_s=0.0125, stopped_s=60.0)
    assert found["events"][0]["recovered"] is False and found["goal_met"] is True  # lost in the event, not outside


def system_record() -> dict:
    samples = {"agent": [{"t_s": t, "rss_kib": 40960, "fds": 12, "threads": 7, "cpu_s": 1.0 + t / 100}
                         for t in range(0, 61, 10)],
               "charon": [{"t_s": t, "rss_kib": 9000, "fds": 20, "threads": 17, "cpu_s": 0.5} for t in range(0, 61, 10)]}
    return {"system": "agent", "error": None, "loss": losses(PLAYED, RUNS, 4000, 0.0125, FAILOVERS, 100.0),
            "rekeys": {"customer": {"child_rekeys": 1, "ike_rekeys": 0}},
            "failovers": FAILOVERS, "anomalies": {"count": 0, "lines": []}, "resources": resources(samples)}


def test_resources_give_trends_and_cpu_per_process():
    found = resources(system_record()["resources"] and {"agent": [{"t_s": 0, "rss_kib": 1, "fds": 1, "threads": 1,
                                                                   "cpu_s": 0.0}]})
    assert found["agent"]["samples"] == 1 and found["agent"]["cpu_s_per_h"] is None
    record = system_record()["resources"]["agent"]
    assert record["rss_kib"]["verdict"] == "flat within noise" and record["cpu_s_per_h"] == 36.0


def test_markdown_has_the_summary_and_one_row_per_event():
    plan = plan_soak(1, 60)
    doc = document(plan, {"agent": system_record(), "strongswan": {"system": "strongswan", "error": "BenchError: x"}},
                   interval_s=0.01, started=T0, finished=T0 + 70, notes=["a note"],
                   lifetimes={"space": {"ike_s": 300, "child_s": 75, "child_rekey_s": 60}})
    text = markdown(doc)
    lines = text.splitlines()
    assert lines[0].startswith("| system | events | ms lost in events | ms lost outside | share lost outside |")
    assert lines[2] == ("| agent | 2 | 362 | 12 | 0.025 % | 1 | 0 | 2 | 40→40 MiB (max 40; flat within noise) "
                        "| 12→12 (max 12; flat within noise) | 7→7 (max 7; flat within noise) | 36 | 0 |")
    assert lines[3].startswith("| plain strongSwan | error: BenchError: x |")
    assert "| 1 | 12 | silent | active | t1, 350 |" in text and "| 2 | 30 | graceful | active | t2, 12 |" in text
    assert "- a note" in text
    assert doc["plan"]["events"][0]["kind"] == "silent" and doc["kind"] == "soak"


def test_the_picture_has_a_row_per_system(tmp_path):
    from space_vpn_lab.soak import picture

    record = {**system_record(), "traffic": {"ping_window": [0.01, 99.9]}}
    doc = document(plan_soak(1, 100), {"agent": record, "strongswan": {"system": "strongswan", "error": "BenchError: x"}},
                   interval_s=0.01, started=T0, finished=T0 + 70, notes=[],
                   lifetimes={"space": {"ike_s": 300, "child_s": 75, "child_rekey_s": 60}})
    path = picture(doc, tmp_path / "soak.png")
    assert path.read_bytes().startswith(b"\x89PNG")
