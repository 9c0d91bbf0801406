"""The soak's instruments that run beside the schedule: a ping every 10 ms for the whole
run in count-bound segments (each one file, scanned line by line when it ends, then
removed: the disk and memory stay bounded however long the soak), and a sampler that
reads the agent's and charon's /proc entries and the agent's failovers every ~10 s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from space_vpn_lab.bench_timeline import TimedPinger
from space_vpn_lab.soak_plan import LossRun
from space_vpn_lab.soak_report import scan_ping, segment_losses
from space_vpn_lab.traffic import MAX_COUNT

log = logging.getLogger(__name__)

SEGMENT_S = 300.0  # one ping process per 5 minutes of pings: about 2.5 MB of -D output
SAMPLE_S = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class SegmentPinger(TimedPinger):
    """A TimedPinger whose end never reads its output whole: the caller scans the file."""

    def finish(self) -> bool:
        """Stop ping if it still runs; True when it had to be interrupted."""
        interrupted = self.running
        if interrupted:
            self._interrupt()
        else:
            self._proc.wait()
        self.stopped_unix = time.time()
        return interrupted


class SegmentedTraffic:
    """Pings from `src` to `dst` in `netns` until stop(), one segment after the other
    (the next starts as soon as the last one ends by its count). Totals and loss runs in
    seconds from t0_unix; the segment files are removed once scanned."""

    def __init__(self, netns: str, src: str, dst: str, interval_s: float, folder: Path,
                 segment_s: float = SEGMENT_S) -> None:
        self.netns, self.src, self.dst, self.interval_s, self.folder = netns, src, dst, interval_s, folder
        self.count = max(1, min(MAX_COUNT, round(segment_s / interval_s)))
        self.sent = self.received = self.segments = 0
        self.runs: list[LossRun] = []
        self.first_reply_s: float | None = None
        self.last_reply_s: float | None = None
        self.pinging_s = 0.0  # sum of the segments' lifetimes
        self.holes_s = 0.0  # between one segment's end and the next one's start
        self.t0_unix = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name="soak-traffic", daemon=True)

    def start(self) -> float:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.t0_unix = time.time()
        self._thread.start()
        return self.t0_unix

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _guarded(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - the report says the traffic stopped, and why
            log.exception("soak traffic failed")
            self.error = f"{type(e).__name__}: {e}"

    def _run(self) -> None:
        ended = None
        while not self._stop.is_set():
            path = self.folder / f"ping-{self.segments % 2}.out"
            pinger = SegmentPinger(self.netns, self.src, self.dst, self.count, self.interval_s, output=path)
            pinger.start()
            if ended is not None:
                self.holes_s += pinger.started_unix - ended
            while pinger.running and not self._stop.wait(0.02):
                pass
            interrupted = pinger.finish()
            ended = pinger.stopped_unix
            self._account(pinger, path, interrupted)

    def _account(self, pinger: SegmentPinger, path: Path, interrupted: bool) -> None:
        with path.open(errors="replace") as lines:
            scan = scan_ping(lines)
        path.unlink()
        sent, received, runs = segment_losses(scan, pinger.started_unix, pinger.stopped_unix, interrupted,
                                              self.t0_unix)
        self.sent += sent
        self.received += received
        self.runs += runs
        self.segments += 1
        self.pinging_s += pinger.stopped_unix - pinger.started_unix
        if scan.first_reply is not None:
            if self.first_reply_s is None:
                self.first_reply_s = round(scan.first_reply - self.t0_unix, 3)
            self.last_reply_s = round(scan.last_reply - self.t0_unix, 3)

    def figures(self) -> dict[str, Any]:
        spacing = self.pinging_s / self.sent if self.sent else self.interval_s
        return {"sent": self.sent, "received": self.received, "lost": self.sent - self.received,
                "segments": self.segments, "segment_count": self.count, "spacing_ms": round(spacing * 1000, 2),
                "between_segments_s": round(self.holes_s, 3), "ping_window": (
                    [self.first_reply_s, self.last_reply_s] if self.first_reply_s is not None else None),
                "error": self.error}


def proc_sample(pid: int) -> dict[str, Any] | None:
    """RSS (KiB), threads, open fds and CPU seconds (user + system) of one process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    after_name = stat.rsplit(")", 1)[1].split()
    utime, stime = int(after_name[11]), int(after_name[12])  # fields 14 and 15 of stat(5)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]), "fds": fds,
            "cpu_s": round((utime + stime) / _CLK_TCK, 2)}


class Sampler:
    """Every `every_s`: /proc of each named pid, and the agent's new failovers (status)."""

    def __init__(self, pids: dict[str, Callable[[], int | None]], t0_unix: float,
                 status: Callable[[], dict[str, Any] | None] | None = None, every_s: float = SAMPLE_S) -> None:
        self.pids, self.t0_unix, self.status, self.every_s = pids, t0_unix, status, every_s
        self.samples: dict[str, list[dict[str, Any]]] = {name: [] for name in pids}
        self.failovers: list[dict[str, Any]] = []
        self.failover_counts: dict[str, int] = {}
        self._seen: set[tuple] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()  # the last one at the end

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - one sample less, the soak goes on
                log.exception("soak sample failed")
            self._stop.wait(self.every_s)

    def sample(self) -> None:
        t_s = round(time.time() - self.t0_unix, 2)
        for name, pid_of in self.pids.items():
            pid = pid_of()
            found = proc_sample(pid) if pid else None
            if found is not None:
                self.samples[name].append({"t_s": t_s, **found})
        status = self.status() if self.status else None
        if status and status.get("connections"):
            conn = status["connections"][0]
            self.failover_counts = dict(conn.get("failover_counts") or {})
            for failover in conn.get("failovers") or []:
                key = (failover["at"], failover["from_tunnel"], failover["to_tunnel"], failover.get("kind"))
                if key not in self._seen:
                    self._seen.add(key)
                    self.failovers.append({**failover, "t_s": round(failover["at"] - self.t0_unix, 3)})


class RekeyDriver:
    """Every `every_s`, the space side rekeys each tunnel's CHILD_SA (the IKE_SA goes by the
    space side's own reauth/rekey time). Counts what it asked for and what charon took."""

    def __init__(self, rekey: Callable[[int], bool], every_s: float) -> None:
        self.rekey, self.every_s = rekey, every_s
        self.requested = self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rekeys", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        wait = self.every_s / 2  # the first half way: a one-minute smoke sees one too
        while not self._stop.wait(wait):
            wait = self.every_s
            for number in (1, 2):
                self.requested += 1
                try:
                    self.accepted += bool(self.rekey(number))
                except Exception:  # noqa: BLE001 - a rekey less; the soak goes on
                    log.exception("soak: space side rekey of tunnel %s failed", number)

    def figures(self) -> dict[str, Any]:
        return {"every_s": self.every_s, "requested": self.requested, "accepted": self.accepted}


class RekeyWatch:
    """The customer charon's own account, over VICI: child-rekey and ike-rekey events, and
    IKE_SAs coming up that we did not initiate (the far end's IKEv1 reauthentication: the
    customer side never answers a Main Mode otherwise)."""

    def __init__(self, session_of: Callable[[], Any]) -> None:
        self.session_of = session_of
        self.child_rekeys = self.ike_rekeys = self.reauths_by_peer = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rekey-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        session = None
        try:
            session = self.session_of()
            for kind, message in session.listen(["child-rekey", "ike-rekey", "ike-updown"], timeout=0.5):
                if self._stop.is_set():
                    break
                if kind == b"child-rekey":
                    self.child_rekeys += 1
                elif kind == b"ike-rekey":
                    self.ike_rekeys += 1
                elif kind == b"ike-updown" and message.get("up") == b"yes":
                    self.reauths_by_peer += sum(1 for name, ike in message.items() if isinstance(ike, dict)
                                                and ike.get("initiator") != b"yes")
        except Exception as e:  # noqa: BLE001 - the report says the count is incomplete
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if session is not None:
                session.transport.close()

    def figures(self) -> dict[str, Any]:
        return {"child_rekeys": self.child_rekeys, "ike_rekeys": self.ike_rekeys + self.reauths_by_peer,
                "ike_rekeys_ikev2": self.ike_rekeys, "ike_sas_started_by_the_far_end": self.reauths_by_peer,
                "error": self.error}
