"""The probe thread's schedule (two heaps: due times and deadlines) against the plain
rule it replaces, checked over every target each wake-up: a target with no probe out is
probed when due, next on its interval's grid without catching up; a probe out is lost at its
deadline; the thread sleeps until the first of those. Driven by hypothesis with a fake
clock and a fake ICMP engine (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.adapters.probe import MAX_WAIT, Prober, next_probe_at
from agent.core.health import ProbeResult, ProbeTarget


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeEngine:
    """Stands in for IcmpProbes: records what was sent and cancelled."""

    sent: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[tuple[str, int]] = field(default_factory=list)

    def start(self, target: ProbeTarget, address: str) -> None:
        self.sent.append(target.slot)

    def cancel(self, slot) -> None:
        self.cancelled.append(slot)

    def forget(self, slot) -> None:
        self.cancel(slot)

    def want_receiver(self, wanted: bool) -> None:
        pass

    def close(self) -> None:
        pass


class Reference:
    """The rule as the old code wrote it: every target looked at on every wake-up."""

    def __init__(self, targets: list[ProbeTarget], now: float) -> None:
        self.targets = {t.slot: t for t in targets}
        self.next_due = {t.slot: now for t in targets}
        self.pending: dict[tuple[str, int], float] = {}  # slot -> deadline

    def expire(self, now: float) -> set:
        lost = {slot for slot, deadline in self.pending.items() if deadline <= now}
        for slot in lost:
            del self.pending[slot]
        return lost

    def send_due(self, now: float) -> set:
        sent = set()
        for slot, target in self.targets.items():
            if slot in self.pending or self.next_due[slot] > now:
                continue
            self.next_due[slot] = next_probe_at(now, target.interval)
            self.pending[slot] = now + min(target.timeout, target.interval)
            sent.add(slot)
        return sent

    def wait_time(self, now: float) -> float:
        moments = [*(due for slot, due in self.next_due.items() if slot not in self.pending),
                   *self.pending.values()]
        return max(0.0, min([MAX_WAIT, *(m - now for m in moments)]))


def make_targets(specs: list[tuple[float, float]]) -> list[ProbeTarget]:
    return [ProbeTarget(key=f"c{i}", tunnel=1, target=f"10.0.{i}.10", source="172.16.0.2", interface=None,
                        interval=interval, timeout=timeout) for i, (interval, timeout) in enumerate(specs)]


def prober_with(targets: list[ProbeTarget], clock: FakeClock) -> tuple[Prober, FakeEngine, list[ProbeResult]]:
    results: list[ProbeResult] = []
    prober = Prober(results.append, clock=clock)
    engine = FakeEngine()
    prober._icmp.close()
    prober._icmp = engine
    prober.set_targets(targets)
    prober._apply_targets()
    return prober, engine, results


target_specs = st.lists(st.tuples(st.sampled_from([0.05, 0.1, 0.25, 1.0, 2.0]),
                                  st.sampled_from([0.03, 0.2, 0.5, 1.0])), min_size=1, max_size=8)
# Each step: how far the clock moves, then which of the probes out are answered (by index).
steps = st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.5, allow_nan=False),
                           st.lists(st.integers(min_value=0, max_value=7), max_size=4)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(specs=target_specs, script=steps)
def test_the_schedule_sends_loses_and_sleeps_like_the_plain_rule(specs, script):
    clock = FakeClock()
    targets = make_targets(specs)
    prober, engine, results = prober_with(targets, clock)
    reference = Reference(targets, clock.now)
    for advance, answers in script:
        clock.now += advance
        results.clear()
        prober._expire(clock.now)
        lost = reference.expire(clock.now)
        assert {(r.key, r.tunnel) for r in results if not r.ok} == lost
        engine.sent.clear()
        prober._send_due(clock.now)
        assert sorted(engine.sent) == sorted(reference.send_due(clock.now))
        assert prober._wait_time(clock.now) == reference.wait_time(clock.now)
        out = sorted(reference.pending)
        for index in answers:
            if index < len(out) and out[index] in reference.pending:
                slot = out[index]
                del reference.pending[slot]
                prober._settle(slot, True, "echo reply", clock.now)
        assert prober._wait_time(clock.now) == reference.wait_time(clock.now)


def test_a_wake_up_with_nothing_due_sends_nothing_and_sleeps_until_the_first_due():
    clock = FakeClock()
    prober, engine, results = prober_with(make_targets([(1.0, 0.5), (1.0, 0.5), (0.25, 0.1)]), clock)
    prober._send_due(clock.now)
    assert len(engine.sent) == 3
    for slot in [("c0", 1), ("c1", 1), ("c2", 1)]:
        prober._settle(slot, True, "echo reply", clock.now + 0.01)
    assert [r.ok for r in results] == [True, True, True]
    clock.now += 0.1
    engine.sent.clear()
    prober._expire(clock.now)
    prober._send_due(clock.now)
    assert engine.sent == []
    assert abs(prober._wait_time(clock.now) - 0.15) < 1e-9  # c2 is due 0.25 s after the start


def test_heaps_stay_bounded_over_a_long_run():
    clock = FakeClock()
    prober, engine, results = prober_with(make_targets([(0.05, 0.03)] * 1 + [(1.0, 0.5)] * 4), clock)
    for _ in range(2000):
        prober._expire(clock.now)
        prober._send_due(clock.now)
        for slot in list(prober._pending):
            prober._settle(slot, True, "echo reply", clock.now)
        clock.now += 0.05
    assert len(engine.sent) > 2000  # the fast target alone sends once per step
    assert len(prober._due) <= 3 * len(prober._targets)
    assert len(prober._deadlines) <= 3 * len(prober._targets)


@given(now=st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
       interval=st.sampled_from([0.05, 0.1, 0.25, 0.3, 1.0, 2.5, 60.0]))
def test_the_next_probe_is_on_the_intervals_grid_between_half_and_one_and_a_half_intervals_away(now, interval):
    at = next_probe_at(now, interval)
    assert interval / 2 - 1e-6 <= at - now <= 1.5 * interval + 1e-6
    steps = at / interval
    assert abs(steps - round(steps)) < 1e-6  # a multiple of the interval: shared by all such targets


def test_targets_of_one_interval_added_at_different_times_go_out_together():
    clock = FakeClock()
    prober, engine, results = prober_with(make_targets([(1.0, 0.5)]), clock)
    prober._send_due(clock.now)
    clock.now += 0.37
    prober.set_targets(make_targets([(1.0, 0.5)] * 3))
    prober._apply_targets()
    prober._send_due(clock.now)  # the two new ones at once, as before
    for slot in list(prober._pending):
        prober._settle(slot, True, "echo reply", clock.now)
    engine.sent.clear()
    clock.now = 101.0  # the grid point after the first probe at 100.0
    prober._send_due(clock.now)
    assert sorted(engine.sent) == [("c0", 1), ("c1", 1), ("c2", 1)]
