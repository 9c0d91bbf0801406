"""Byte and packet counters that keep growing across CHILD_SA rekeys."""

from __future__ import annotations

from agent.core.health import TrafficTotals
from agent.core.observation import ChildSa


def child(uniqueid: str, bytes_in: int, bytes_out: int = 0) -> ChildSa:
    return ChildSa("c", uniqueid, "INSTALLED", bytes_in=bytes_in, bytes_out=bytes_out,
                   packets_in=bytes_in // 100, packets_out=bytes_out // 100)


def test_a_rekey_keeps_the_old_childs_bytes():
    totals = TrafficTotals().update([child("1", 1000, 500)])
    assert totals.totals == (1000, 500, 10, 5)
    totals = totals.update([child("1", 1500, 700), child("2", 0)])  # rekey overlap
    assert totals.totals == (1500, 700, 15, 7)
    totals = totals.update([child("2", 200, 100)])  # the old child is gone
    assert totals.totals == (1700, 800, 17, 8)
    totals = totals.update([])  # tunnel down
    assert totals.totals == (1700, 800, 17, 8)
    totals = totals.update([child("3", 50)])  # re-established
    assert totals.totals == (1750, 800, 17, 8)


def test_a_live_counter_never_goes_back():
    totals = TrafficTotals().update([child("1", 1000)]).update([child("1", 900)])
    assert totals.totals[0] == 1000
