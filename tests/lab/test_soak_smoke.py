"""The soak machinery for 60 s on the agent (plain strongSwan is left to the full soak):
real charon daemons rekeying every minute, maintenance events from the seeded schedule,
a ping every 10 ms throughout. The report must hold every figure, traffic must come back
after each event, and the agent's log must show nothing that no event explains."""

from __future__ import annotations

import json

import pytest

from space_vpn_lab import soak

pytestmark = pytest.mark.lab

DURATION_S = 60.0


@pytest.mark.timeout(150)
def test_a_minute_of_soak_on_the_agent(tmp_path):
    json_path = tmp_path / "results" / "soak.json"
    code, doc = soak.run_soak(tmp_path / "work", duration_s=DURATION_S, seed=1, systems=["agent"],
                              json_path=json_path, interval_s=0.01, log_dir=tmp_path / "results" / "logs",
                              sample_s=5.0, draw_picture=False)
    record = doc["systems"]["agent"]
    assert code == 0 and record["error"] is None
    assert json.loads(json_path.read_text())["kind"] == "soak" and json_path.with_suffix(".md").exists()

    loss, traffic = record["loss"], record["traffic"]
    assert traffic["sent"] > DURATION_S / 0.02 and traffic["error"] is None
    assert loss["events"], "the schedule of a minute has at least one event"
    for event in loss["events"]:
        assert event["error"] is None and event["restored_s"] > event["started_s"]
        assert event["recovered"], f"traffic did not come back after event {event['index'] + 1}"
    assert loss["outside_share"] is not None and "ms_lost" in loss["outside"]
    assert record["anomalies"]["count"] == 0, record["anomalies"]["lines"]
    assert record["final_redundant"]

    assert record["failovers"], "an event on the carrying tunnel moves the traffic"
    for name in ("agent", "charon"):
        found = record["resources"][name]
        assert found["samples"] >= 5
        assert all(found[key] is not None for key in ("rss_kib", "fds", "threads"))
    assert record["resources"]["agent"]["cpu_s_per_h"] is not None
    rekeys = record["rekeys"]["customer"]
    assert rekeys["error"] is None and rekeys["child_rekeys"] >= 0 and rekeys["ike_rekeys"] >= 0
    assert record["rekeys"]["space_requested"]["requested"] > 0
