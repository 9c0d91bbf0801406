"""The data-path probe against real charons: a Prober runs in a child process started
with `ip netns exec <customer namespace>`, so its thread opens its sockets inside the
lab (the Prober creates every socket on its own thread), and prints one JSON line per
result. Tunnel 1 is brought up by hand, as in test_lab_smoke.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from agent.adapters.probe import ProbeResult, ProbeTarget
from space_vpn_lab.lab import Lab
from space_vpn_lab.topology import CUSTOMER_HOST_IP, SPACE_HOST_IP, list_netns
from space_vpn_lab.traffic import check_lab_address
from tests.lab.test_lab_smoke import _configure_customer_tunnel1, _initiate

pytestmark = pytest.mark.lab

PREFIX = "svp"
INTERVAL = 0.2
TIMEOUT = 0.15
#: kernel-libipsec's TUN device: where charon routes the far side's subnet.
LIBIPSEC_DEVICE = "ipsec0"
PYTHON = str(Path(sys.prefix) / "bin" / "python")

# Runs inside the customer namespace; stops by itself after argv[2] seconds.
CHILD = """
import json, sys, time
from dataclasses import asdict
from agent.adapters.probe import Prober, ProbeTarget

def post(result):
    print(json.dumps(asdict(result)), flush=True)

prober = Prober(post)
prober.set_targets([ProbeTarget(**t) for t in json.loads(sys.argv[1])])
prober.start()
time.sleep(float(sys.argv[2]))
prober.stop()
print(json.dumps({"alive": prober._thread.is_alive()}), flush=True)
"""


def probe_target(key: str, interface: str | None) -> ProbeTarget:
    return ProbeTarget(key=key, tunnel=1, target=check_lab_address(SPACE_HOST_IP),
                       source=check_lab_address(CUSTOMER_HOST_IP), interface=interface,
                       interval=INTERVAL, timeout=TIMEOUT)


class ProbeRun:
    """One child Prober; `results` fills as lines arrive (read on a thread so the
    test can act on the lab in the middle of a run)."""

    def __init__(self, lab: Lab, targets: list[ProbeTarget], seconds: float) -> None:
        self.seconds = seconds
        self.results: list[ProbeResult] = []
        self.stopped_cleanly: bool | None = None
        argv = ["ip", "netns", "exec", lab.topology.cust_ns, PYTHON, "-c", CHILD,
                json.dumps([asdict(t) for t in targets]), str(seconds)]
        # stderr to a file: only the reader thread may read the stdout pipe.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        # ip netns exec execs python, so this pid is the prober's own.
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr,
                                      stdin=subprocess.DEVNULL, text=True, cwd=Path(__file__).parents[2])
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            fields = json.loads(line)
            if "alive" in fields:
                self.stopped_cleanly = not fields["alive"]
            else:
                self.results.append(ProbeResult(**fields))

    def wait_for(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(list(self.results)):
                return True
            time.sleep(0.05)
        return predicate(list(self.results))

    def finish(self) -> str:
        """Wait for the child's own end (or kill it), return its stderr."""
        try:
            self._proc.wait(timeout=self.seconds + 10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        self._stderr.seek(0)
        return self._stderr.read()

    def __enter__(self) -> "ProbeRun":
        return self

    def __exit__(self, *exc) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reader.join(timeout=5)
        self._stderr.close()


@pytest.fixture
def lab_with_tunnel1(tmp_path: Path):
    with Lab(tmp_path / "lab", prefix=PREFIX) as lab:
        _configure_customer_tunnel1(lab)
        _initiate(lab)
        assert lab.customer_ping(count=3, interval=0.2).received >= 2, "tunnel 1 carries no traffic"
        yield lab
    assert not [ns for ns in list_netns() if ns.startswith(PREFIX + "-")]


def test_probe_sees_the_tunnel_and_its_silent_loss(lab_with_tunnel1):
    lab = lab_with_tunnel1
    with ProbeRun(lab, [probe_target("acme-office", None)], seconds=6.0) as run:
        assert run.wait_for(lambda rs: sum(r.ok for r in rs) >= 5, timeout_s=4.0), run.results
        up = list(run.results)
        assert all(r.ok and r.rtt is not None and 0 < r.rtt < TIMEOUT for r in up), up

        lab.space.silent_down(1)
        down_at = time.monotonic()  # the blackhole is in place once silent_down returns
        assert run.wait_for(lambda rs: sum(r.sent_at > down_at for r in rs) >= 5, timeout_s=4.0)
        err = run.finish()

    after = [r for r in run.results if r.sent_at > down_at]
    assert after and not any(r.ok for r in after), after
    assert all(r.rtt is None for r in after)
    # "Within a couple of intervals": no success after the blackhole, and results keep
    # coming at the probe's cadence (one per interval, give or take).
    gaps = [b.sent_at - a.sent_at for a, b in zip(run.results, run.results[1:])]
    assert max(gaps) < 2 * INTERVAL, gaps
    assert all(r.key == "acme-office" and r.tunnel == 1 for r in run.results)
    assert run.stopped_cleanly, err


def test_probe_bound_to_the_tunnel_device(lab_with_tunnel1):
    with ProbeRun(lab_with_tunnel1, [probe_target("acme-office", LIBIPSEC_DEVICE)], seconds=2.0) as run:
        err = run.finish()
    assert len(run.results) >= 5, err
    assert sum(r.ok for r in run.results) >= len(run.results) - 1, run.results


def test_missing_interface_fails_probes_and_prober_keeps_running(lab_with_tunnel1):
    targets = [probe_target("missing", "svp-nosuch0"), probe_target("routed", None)]
    with ProbeRun(lab_with_tunnel1, targets, seconds=3.0) as run:
        err = run.finish()
    missing = [r for r in run.results if r.key == "missing"]
    routed = [r for r in run.results if r.key == "routed"]
    # One failed result per interval, none raised out of the thread.
    assert len(missing) >= 10 and not any(r.ok for r in missing), missing
    assert all(r.rtt is None for r in missing)
    assert len(routed) >= 10 and sum(r.ok for r in routed) >= len(routed) - 1, routed
    assert "Traceback" not in err, err
    assert run.stopped_cleanly, err


def test_no_targets_starts_and_stops_quickly(tmp_path):
    with Lab(tmp_path / "lab", prefix=PREFIX) as lab:
        began = time.monotonic()
        with ProbeRun(lab, [], seconds=0.5) as run:
            err = run.finish()
        assert run.results == []
        assert run.stopped_cleanly, err
        assert time.monotonic() - began < 5.0
    assert os.path.exists(PYTHON)
