"""The pure parts of the failover benchmark: ms-lost arithmetic, rows, table, markdown, JSON."""

from __future__ import annotations

import json

import pytest

from space_vpn_lab import bench


def _run(**overrides):
    run = bench.new_record("policy", bench.SCENARIOS["a"], "agent", 0.01)
    run.update(sent=4500, received=4460, lost=40, ms_lost=640, restore_s=3.456)
    run.update(overrides)
    return run


@pytest.mark.parametrize("lost, spacing, expected", [
    (0, 0.01, 0),
    (1, 0.01, 10),
    (288, 0.1, 28800),
    (40, 0.016, 640),
    (3, 0.005, 15),
    (7, 0.0123, 86),  # rounded to whole ms
])
def test_ms_lost_is_lost_pings_times_spacing(lost, spacing, expected):
    assert bench.ms_lost(lost, spacing) == expected


@pytest.mark.parametrize("elapsed, sent, interval, expected", [
    (45.0, 4500, 0.01, 0.01),
    (72.0, 4500, 0.01, 0.016),  # ping slower than -i: the measured spacing counts
    (40.0, 4500, 0.01, 0.01),  # never faster than asked: the nominal is the floor
    (5.0, 0, 0.01, 0.01),
])
def test_packet_spacing(elapsed, sent, interval, expected):
    assert bench.packet_spacing(elapsed, sent, interval) == pytest.approx(expected)


@pytest.mark.parametrize("traffic, interval, expected", [(45, 0.01, 4500), (12, 0.005, 2400), (0.001, 0.01, 1)])
def test_ping_count(traffic, interval, expected):
    assert bench.ping_count(traffic, interval) == expected


def test_parse_choice_keeps_order_and_drops_duplicates():
    assert bench.parse_choice("c, a,c", tuple(bench.SCENARIOS), "--scenarios") == ["c", "a"]


@pytest.mark.parametrize("text", ["", None, "a,x", "policy,kernel"])
def test_parse_choice_refuses_unknown_or_empty(text):
    with pytest.raises(ValueError):
        bench.parse_choice(text, ("a", "b", "policy"), "--x")


def test_row_of_a_measured_run():
    assert bench.build_row(_run()) == {"mode": "policy", "scenario": "a silent", "system": "agent",
                                       "ms_lost": "640", "restored": "3.5 s"}


def test_row_when_redundancy_never_came_back():
    row = bench.build_row(_run(system="strongswan", restore_s=None))
    assert row["restored"] == "never (> 60 s)"


def test_row_of_a_failed_run_shows_the_first_line_of_the_error():
    row = bench.build_row(_run(ms_lost=None, error="BenchError: agentctl drain 1 failed (exit 2)\nmore"))
    assert row["ms_lost"] == "error"
    assert row["restored"] == "error: BenchError: agentctl drain 1 failed (exit 2)"


def test_table_columns_line_up():
    rows = [bench.build_row(_run()), bench.build_row(_run(system="strongswan", ms_lost=29870, restore_s=None))]
    lines = bench.format_table(rows).splitlines()
    assert lines[0].split() == ["mode", "scenario", "system", "ms", "lost", "redundancy", "restored"]
    assert len(lines) == 3
    # ms lost is right-aligned: the numbers end in the same column as the header.
    end = lines[0].index("ms lost") + len("ms lost")
    assert lines[1][:end].endswith("640") and lines[2][:end].endswith("29870")
    assert lines[2].rstrip().endswith("never (> 60 s)")


def test_table_without_rows_is_just_the_header():
    assert bench.format_table([]) == "mode  scenario  system  ms lost  redundancy restored\n"


def test_markdown_table_and_notes():
    text = bench.format_markdown([bench.build_row(_run())], ["Ping every 10 ms."])
    assert text.splitlines()[:3] == [
        "| mode | scenario | system | ms lost | redundancy restored |",
        "|---|---|---|---:|---|",
        "| policy | a silent | agent | 640 | 3.5 s |",
    ]
    assert text.endswith("\nPing every 10 ms.\n")
    listed = bench.format_markdown([bench.build_row(_run())], ["Ping every 10 ms.", "one", "two"])
    assert listed.endswith("\nPing every 10 ms.\n\n- one\n- two\n")


def test_markdown_escapes_pipes_in_errors():
    text = bench.format_markdown([bench.build_row(_run(ms_lost=None, error="x | y"))], [])
    assert text.splitlines()[2].count("|") == 6


def test_report_document_is_json_with_every_run():
    runs = [_run(), _run(system="strongswan", restore_s=None, error=None)]
    doc = bench.report_document(runs, interval_s=0.01, started=1_700_000_000, finished=1_700_000_321.4,
                                notes=["route mode skipped: no vng"])
    again = json.loads(json.dumps(doc))
    assert again["duration_s"] == 321.4
    assert again["started_at"] == "2023-11-14T22:13:20+00:00"
    assert again["interval_s"] == 0.01 and again["ike_version"] == 1
    assert again["notes"] == ["route mode skipped: no vng"]
    assert [r["system"] for r in again["runs"]] == ["agent", "strongswan"]
    assert again["runs"][1]["restore_s"] is None
    for key in ("sent", "received", "lost", "ms_lost", "restore_s", "restore_cap_s", "events", "error",
                "started_at", "mode", "scenario", "scenario_name", "interval_s"):
        assert key in again["runs"][0]


def test_every_scenario_has_a_driver_and_a_window():
    assert list(bench.SCENARIOS) == ["a", "b", "c", "d", "e", "f", "g"]
    assert [k for k, s in bench.SCENARIOS.items() if s.api_change] == ["e", "f", "g"]
    assert all(callable(s.driver) and s.traffic_s > 0 for s in bench.SCENARIOS.values())


def test_seed_conn_follows_the_article():
    conn = bench.seed_conn(2)
    child = conn["children"]["vpn2"]
    assert conn["version"] == "1" and conn["proposals"] == ["aes256-sha256-modp2048"]
    assert (conn["dpd_delay"], conn["dpd_timeout"], conn["keyingtries"]) == ("10s", "30s", "0")
    assert conn["reauth_time"] == "28800s" and conn["remote_addrs"] == ["198.51.100.2"]
    assert (child["start_action"], child["dpd_action"], child["close_action"]) == ("trap", "restart", "none")
    assert child["life_time"] == "3600s" and child["esp_proposals"] == ["aes256-sha256-modp2048"]
    assert (child["local_ts"], child["remote_ts"]) == (["172.16.0.0/16"], ["10.0.0.0/16"])


def test_markdown_notes_say_how_ms_lost_was_counted():
    runs = [_run(spacing_ms=15.8), _run(spacing_ms=11.8), _run(error="x")]
    doc = bench.report_document(runs, interval_s=0.01, started=1_700_000_000, finished=1_700_000_579,
                                notes=["route mode: the VM stopped early"])
    head, *rest = bench.markdown_notes(doc)
    assert head.startswith("`ping -i 0.01` (measured spacing 11.8-15.8 ms); ms lost = lost pings x measured spacing.")
    assert "in 579 s" in head
    assert rest == ["route mode: the VM stopped early"]


def test_repeated_runs_get_a_median_and_range_and_numbered_rows():
    from space_vpn_lab.bench_report import summarize_repeats

    def run(system: str, lost: int | None, attempt: int) -> dict:
        return {"mode": "route", "scenario": "b", "scenario_name": "graceful", "system": system,
                "ms_lost": lost, "attempt": attempt, "restore_s": 1.0}

    runs = [run("agent", 22, 1), run("agent", 13, 2), run("agent", 11, 3), run("agent", None, 4),
            run("strongswan", 24, 1)]
    assert summarize_repeats(runs) == ["route b graceful agent: ms lost median 13 (11-22) over 3 runs"]
    assert bench.build_row(runs[1])["scenario"] == "b graceful #2"
    assert bench.build_row(runs[0])["scenario"] == "b graceful"


def _recreation(**overrides):
    run = bench.new_record("policy", bench.SCENARIOS["g"], "agent", 0.01)
    run.update(sent=2000, received=1400, lost=600, ms_lost=6600, restore_s=2.1, traffic_back_s=1.234,
               traffic_back_window_s=18.0, follows_api=True)
    run.update(overrides)
    return run


def test_row_of_a_recreation_shows_when_traffic_came_back():
    assert bench.build_row(_recreation())["traffic_back"] == "1.23 s"
    assert bench.build_row(_recreation(traffic_back_s=None))["traffic_back"] == "never (> 18 s)"
    seed = _recreation(system="strongswan", traffic_back_s=None, follows_api=False)
    assert bench.build_row(seed)["traffic_back"] == "never (needs a human)"
    assert bench.build_row(_recreation(error="BenchError: x"))["traffic_back"] == "error"


def test_the_traffic_back_column_appears_only_with_a_recreation():
    rows = [bench.build_row(_run()), bench.build_row(_recreation())]
    lines = bench.format_table(rows).splitlines()
    assert lines[0].endswith("redundancy restored  traffic back after the new answer")
    assert lines[1].split()[-3:] == ["3.5", "s", "-"]
    assert lines[2].rstrip().endswith("1.23 s")
    text = bench.format_markdown(rows, [])
    assert text.splitlines()[:4] == [
        "| mode | scenario | system | ms lost | redundancy restored | traffic back after the new answer |",
        "|---|---|---|---:|---|---|",
        "| policy | a silent | agent | 640 | 3.5 s | - |",
        "| policy | g re-creation | agent | 6600 | 2.1 s | 1.23 s |",
    ]
    assert "traffic back" not in bench.format_table([bench.build_row(_run())])


@pytest.mark.parametrize("before, after, expected", [
    ({"IKE t1": "1", "IKE t2": "2", "CHILD t1": "3"}, {"IKE t1": "1", "IKE t2": "2", "CHILD t1": "3"}, (0, 0, 3)),
    ({"IKE t1": "1", "IKE t2": "2", "CHILD t1": "3"}, {"IKE t1": "5", "IKE t2": "4", "CHILD t1": "6"}, (3, 0, 3)),
    ({"IKE t1": "1", "CHILD t1": "3"}, {"IKE t1": "1"}, (0, 1, 2)),  # gone, not re-created
    ({}, {"IKE t1": "1"}, (0, 0, 0)),
])
def test_sas_recreated_compares_unique_ids(before, after, expected):
    from space_vpn_lab.bench_report import sas_recreated
    assert sas_recreated(before, after) == expected


def test_api_change_note_counts_the_sas_and_says_what_old_selectors_met():
    run = bench.new_record("route", bench.SCENARIOS["f"], "agent", 0.01)
    run.update(sas_before={"IKE t1": "1", "CHILD t1": "2"}, sas_after={"IKE t1": "1", "CHILD t1": "2"})
    assert bench.api_change_note(run) == "route f reordered agent: SAs re-created: 0/2"
    seed = bench.new_record("policy", bench.SCENARIOS["e"], "strongswan", 0.01)
    seed.update(sas_before={"IKE vpn1": "1"}, sas_after={"IKE vpn1": "1"},
                old_selectors_quick_mode="tunnel 2: accepted (172.16.0.0/16 === 10.0.0.0/16)")
    assert bench.api_change_note(seed) == (
        "policy e cidr update strongswan: SAs re-created: 0/1; a new Quick Mode with its old selectors after "
        "the window: tunnel 2: accepted (172.16.0.0/16 === 10.0.0.0/16)")
    gone = {**seed, "old_selectors_quick_mode": None, "sas_after": {}}
    assert bench.api_change_note(gone) == "policy e cidr update strongswan: SAs re-created: 0/1, gone: 1/1"
    assert bench.api_change_note(_run()) is None
    assert bench.api_change_note({**run, "error": "x"}) is None


def test_lab_prefix_comes_from_the_environment_like_the_lab_tests(monkeypatch):
    monkeypatch.delenv("SPACE_VPN_LAB_PREFIX", raising=False)
    assert bench.lab_prefix(bench.PREFIX) == "svb"
    monkeypatch.setenv("SPACE_VPN_LAB_PREFIX", "svp")
    assert bench.lab_prefix(bench.PREFIX) == "svp"
