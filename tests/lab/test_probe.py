"""The data-path probe against real charons: a Prober runs in a child process started
with `ip netns exec <customer namespace>`, so its thread opens its sockets inside the
lab (the Prober creates every socket on its own thread), and prints one JSON line per
result. Tunnel 1 is brought up by hand, as in test_lab_smoke. The space side's
internal-routing app answers TCP only, like a real Private Space: a TCP probe gets
through, an ICMP probe at it does not.
"""

from __future__ import annotations

import json
import os
import statistics
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
from space_vpn_lab.topology import APP_HOST_IPS, APP_PORT, CUSTOMER_HOST_IP, SPACE_HOST_IP, list_netns
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


def probe_target(key: str, interface: str | None, target: str = SPACE_HOST_IP, port: int | None = None) -> ProbeTarget:
    return ProbeTarget(key=key, tunnel=1, target=check_lab_address(target),
                       source=check_lab_address(CUSTOMER_HOST_IP), interface=interface,
                       interval=INTERVAL, timeout=TIMEOUT, port=port)


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


APP_IP = APP_HOST_IPS[0]


def test_tcp_probe_through_the_tunnel_and_its_silent_loss(lab_with_tunnel1):
    """SYN-ACK from the app's port, RST from a closed one: both are answers through the
    tunnel. After a silent loss every connect times out."""
    lab = lab_with_tunnel1
    targets = [probe_target("open", None, APP_IP, APP_PORT), probe_target("closed", None, APP_IP, APP_PORT + 1)]
    syns_before = lab.app.syns(APP_IP)
    with ProbeRun(lab, targets, seconds=5.0) as run:
        assert run.wait_for(lambda rs: sum(r.ok for r in rs if r.key == "open") >= 8 and
                            sum(r.ok for r in rs if r.key == "closed") >= 8, timeout_s=4.0), run.results
        up = list(run.results)
        lab.space.silent_down(1)
        down_at = time.monotonic()
        assert run.wait_for(lambda rs: sum(r.sent_at > down_at for r in rs) >= 8, timeout_s=4.0)
        err = run.finish()
    assert all(r.ok and r.rtt is not None and 0 < r.rtt < TIMEOUT for r in up), up
    open_rtts = [r.rtt for r in up if r.key == "open"]
    print(f"TCP probe RTT through the lab tunnel: median {statistics.median(open_rtts) * 1000:.2f} ms "
          f"(min {min(open_rtts) * 1000:.2f}, max {max(open_rtts) * 1000:.2f}, n={len(open_rtts)})")
    # The SYNs reached the app itself (one per probe to the open port, none repeated).
    assert lab.app.syns(APP_IP) - syns_before >= len(open_rtts)
    after = [r for r in run.results if r.sent_at > down_at]
    assert after and not any(r.ok for r in after) and all(r.rtt is None for r in after), after
    gaps = [b.sent_at - a.sent_at for a, b in zip(run.results, run.results[1:]) if a.key == b.key == "open"]
    assert all(g < 2 * INTERVAL for g in gaps), gaps
    assert run.stopped_cleanly and "Traceback" not in err, err


def test_icmp_probe_at_the_tcp_only_app_fails(lab_with_tunnel1):
    """As in a real Private Space, the app answers no ping: ICMP probes at it fail while
    the same tunnel answers them from the lab's ping host and a TCP probe at the app."""
    lab = lab_with_tunnel1
    dropped_before = lab.app.icmp_dropped()
    targets = [probe_target("app-icmp", None, APP_IP), probe_target("app-tcp", None, APP_IP, APP_PORT),
               probe_target("ping-host", None)]
    with ProbeRun(lab, targets, seconds=2.0) as run:
        err = run.finish()
    by_key = {key: [r for r in run.results if r.key == key] for key in ("app-icmp", "app-tcp", "ping-host")}
    assert len(by_key["app-icmp"]) >= 5 and not any(r.ok for r in by_key["app-icmp"]), by_key["app-icmp"]
    for key in ("app-tcp", "ping-host"):
        assert len(by_key[key]) >= 5 and sum(r.ok for r in by_key[key]) >= len(by_key[key]) - 1, by_key[key]
    # Dropped at the app, i.e. after crossing the tunnel, not lost on the way.
    assert lab.app.icmp_dropped() - dropped_before >= len(by_key["app-icmp"]) - 1
    assert run.stopped_cleanly, err


def test_tcp_probe_bound_to_the_tunnel_device(lab_with_tunnel1):
    targets = [probe_target("bound", LIBIPSEC_DEVICE, APP_IP, APP_PORT), probe_target("missing", "svp-nosuch0",
                                                                                     APP_IP, APP_PORT)]
    with ProbeRun(lab_with_tunnel1, targets, seconds=2.0) as run:
        err = run.finish()
    bound = [r for r in run.results if r.key == "bound"]
    missing = [r for r in run.results if r.key == "missing"]
    assert len(bound) >= 5 and sum(r.ok for r in bound) >= len(bound) - 1, bound
    assert len(missing) >= 5 and not any(r.ok for r in missing), missing
    assert run.stopped_cleanly and "Traceback" not in err, err
