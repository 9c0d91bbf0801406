"""Host names as probe targets: their syntax, and the resolver thread that turns them
into addresses through the system resolver (getaddrinfo, IPv4) at once and then every
resolve_interval, so a slow lookup never stalls the probe thread. Only RFC 1918
answers are used: a probe never leaves the private ranges.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.core.addresses import PRIVATE_NETWORKS_TEXT, is_private_address

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 253
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: Seconds before a name that gave no address is tried again (unless resolve_interval
#: is shorter): a name that only resolves once the tunnel is up should not wait a minute.
FAILED_RETRY = 5.0
#: Seconds the thread sleeps at most without names, so it notices stop() even if a wake-up is lost.
MAX_IDLE = 1.0
#: getaddrinfo errors that say nothing about the name (the resolver is away, SERVFAIL):
#: the last good address stays in use. Any other error drops it.
TEMPORARY_ERRORS = frozenset(code for code in (socket.EAI_AGAIN, socket.EAI_FAIL,
                                                getattr(socket, "EAI_SYSTEM", None)) if code is not None)


def host_name_problem(name: str) -> str | None:
    """Why `name` is not a host name a probe can go to (None: it is one). Syntax only."""
    text = name[:-1] if name.endswith(".") else name  # a fully qualified name may end in a dot
    if not text:
        return "empty"
    if len(text) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    labels = text.split(".")
    bad = next((label for label in labels if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        return f"'{bad}' is not a DNS label (letters, digits and inner '-', 1-63 characters)"
    if labels[-1].isdigit():
        return "a name cannot end in a number; an IPv4 address is four numbers (e.g. 10.0.0.10)"
    try:
        socket.inet_aton(text)  # "0x0a000001" would silently become 10.0.0.1
    except OSError:
        return None
    return "reads as an IPv4 address in another notation; write it as four numbers (e.g. 10.0.0.10)"


@dataclass(frozen=True)
class Resolution:
    address: str | None  # the one probes go to; None: probes are not sent
    problem: str | None = None  # why there is no (fresh) address


class NameResolver:
    """Keeps an address for every wanted name. set_names and address may be called
    from any thread; on_change (no arguments) is called from the resolver thread when
    a name's address changes, appears or goes."""

    def __init__(self, on_change: Callable[[], None], *, getaddrinfo=socket.getaddrinfo,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_change = on_change
        self._getaddrinfo = getaddrinfo
        self._clock = clock
        self._lock = threading.Lock()
        self._names: dict[str, float] = {}  # wanted: name -> resolve interval (s)
        self._addresses: dict[str, str] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-resolver", daemon=True)
        # Owned by the resolver thread (or a test driving resolve_due) from here on.
        self._state: dict[str, Resolution] = {}
        self._due: dict[str, float] = {}

    def set_names(self, names: Mapping[str, float]) -> None:
        """Replace the wanted names (name -> resolve interval in s); new ones resolve at once."""
        with self._lock:
            self._names = dict(names)
        self._wake.set()

    def address(self, name: str) -> str | None:
        with self._lock:
            return self._addresses.get(name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():  # a lookup still blocks in the system resolver
                log.warning("probe resolver thread did not stop within 2 s")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the round: a set_names during it wakes the next wait
            try:
                wait = self.resolve_due()
            except Exception:  # keep resolving: probes of a name depend on it
                log.exception("probe name resolution failed; continuing")
                wait = MAX_IDLE
            self._wake.wait(wait)

    def resolve_due(self) -> float:
        """One round: look up every name that is due; seconds until the next is due."""
        with self._lock:
            names = dict(self._names)
        for gone in [n for n in self._due if n not in names]:
            del self._due[gone]
            self._state.pop(gone, None)
            with self._lock:
                self._addresses.pop(gone, None)
        for name, interval in names.items():
            if self._due.get(name, 0.0) > self._clock():
                continue
            resolution = self._resolve(name)
            retry = interval if resolution.problem is None else min(interval, FAILED_RETRY)
            self._due[name] = self._clock() + retry
            self._record(name, resolution)
        now = self._clock()
        return max(0.0, min((due - now for due in self._due.values()), default=MAX_IDLE))

    def _resolve(self, name: str) -> Resolution:
        previous = self._state.get(name)
        kept = previous.address if previous is not None else None
        try:
            infos = self._getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as e:
            if e.errno in TEMPORARY_ERRORS and kept is not None:
                return Resolution(kept, f"cannot resolve it now ({e}); probing the last address, {kept}")
            return Resolution(None, f"no IPv4 address: {e}")
        except (OSError, UnicodeError) as e:
            if kept is not None:
                return Resolution(kept, f"cannot resolve it now ({e}); probing the last address, {kept}")
            return Resolution(None, f"no IPv4 address: {e}")
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            return Resolution(None, "no IPv4 address")
        public = [a for a in addresses if not is_private_address(a)]
        if public:
            return Resolution(None, f"refusing {', '.join(public)}: not in {PRIVATE_NETWORKS_TEXT} "
                                    "(probes never leave the private ranges)")
        # A name with several addresses (a load balancer) is answered in rotating order:
        # stay on the current one while it is still among them.
        return Resolution(kept if kept in addresses else addresses[0])

    def _record(self, name: str, resolution: Resolution) -> None:
        previous = self._state.get(name)
        self._state[name] = resolution
        if resolution == previous:
            return  # logged once per change
        with self._lock:
            if resolution.address is None:
                self._addresses.pop(name, None)
            else:
                self._addresses[name] = resolution.address
        before = previous.address if previous is not None else None
        if resolution.problem is not None:
            log.warning("probe target %s: %s", name, resolution.problem)
        elif before is None:
            log.info("probe target %s is %s", name, resolution.address)
        elif before != resolution.address:
            log.info("probe target %s moved from %s to %s", name, before, resolution.address)
        else:
            log.info("probe target %s resolves again, still %s", name, resolution.address)
        if resolution.address != before:
            self._on_change()
