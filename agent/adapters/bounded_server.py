"""A socket server that no client can exhaust, for the control socket and /metrics.

One thread reads every client's request (up to a terminator or a size cap) without
blocking, so a client that trickles bytes costs a descriptor, not a thread, and is dropped
at its deadline. Complete requests run on a pool of at most `max_clients` threads, and at
most `max_clients` connections are open at once: a newcomer displaces the oldest client
still sending (a real client sends its request at once), or is turned away.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_clients: int = 16
    #: s from accept until the whole request is in; a slower client is dropped.
    request_deadline: float = 3.0
    #: s from accept until the answer is sent, whatever the handler waits for.
    connection_deadline: float = 10.0
    #: s a client must have been sending before a newcomer may displace it.
    displace_after: float = 0.25
    #: bytes of request kept; more goes to the handler as an oversized request.
    max_request: int = 1 << 20


class Client:
    """One accepted connection, its request as read, and its deadline."""

    def __init__(self, sock: socket.socket, address: object, accepted: float, limits: Limits,
                 clock: Callable[[], float]):
        self.sock = sock
        self.address = address
        self.accepted = accepted
        self.request = b""
        self.ended = False  # the client shut its side down (or closed) after sending
        self._deadline = accepted + limits.connection_deadline
        self._clock = clock

    def remaining(self) -> float:
        """s left before this connection's deadline (never below 0)."""
        return max(0.0, self._deadline - self._clock())

    def send(self, data: bytes) -> None:
        """Send all of `data` before the connection's deadline; OSError (TimeoutError) if not."""
        remaining = self.remaining()
        if remaining <= 0:
            raise TimeoutError("connection deadline passed")
        self.sock.settimeout(remaining)  # sendall's timeout bounds the whole call
        self.sock.sendall(data)


class BoundedServer:
    """Serves `listener` (bound and listening) until stop().

    `complete(request)` says whether a request is whole; `handle(client)` runs on a
    worker thread for a whole, oversized or ended request and answers with client.send.
    `busy` is sent (best effort) to a client turned away."""

    def __init__(self, listener: socket.socket, name: str, complete: Callable[[bytes], bool],
                 handle: Callable[[Client], None], *, busy: bytes = b"", limits: Limits = Limits(),
                 clock: Callable[[], float] = time.monotonic):
        self.listener = listener
        self._name = name
        self._complete = complete
        self._handle = handle
        self._busy_answer = busy
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._working = 0  # clients handed to the pool, not yet closed
        self._reading: dict[socket.socket, Client] = {}  # selector thread only; oldest first
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._pool = ThreadPoolExecutor(max_workers=limits.max_clients, thread_name_prefix=f"{name}-worker")
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.listener.setblocking(False)
        self._selector.register(self.listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    @property
    def open_clients(self) -> int:
        with self._lock:
            return self._working + len(self._reading)

    # -- the selector thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(self._next_timeout()):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    else:
                        self._read(key.data)
                self._drop_late()
        except Exception:
            log.exception("%s: server thread crashed", self._name)
        finally:
            for client in list(self._reading.values()):
                self._forget(client)

    def _next_timeout(self) -> float:
        if not self._reading:
            return 1.0
        oldest = next(iter(self._reading.values()))
        return min(1.0, max(0.0, oldest.accepted + self.limits.request_deadline - self._clock()))

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: try again on the next wake-up
                log.warning("%s: cannot accept a client: %s", self._name, e.strerror or e)
                return
            now = self._clock()
            if self.open_clients >= self.limits.max_clients and not self._displace_one(now):
                self._turn_away(sock)
                continue
            sock.setblocking(False)
            client = Client(sock, address, now, self.limits, self._clock)
            with self._lock:
                self._reading[sock] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _displace_one(self, now: float) -> bool:
        oldest = next(iter(self._reading.values()), None)
        if oldest is None or now - oldest.accepted < self.limits.displace_after:
            return False
        log.debug("%s: dropping a client that sent no whole request in %.1f s (%d clients open)",
                  self._name, now - oldest.accepted, self.limits.max_clients)
        self._forget(oldest)
        return True

    def _turn_away(self, sock: socket.socket) -> None:
        log.debug("%s: turning a client away: %d clients open", self._name, self.limits.max_clients)
        try:
            if self._busy_answer:
                sock.send(self._busy_answer, socket.MSG_DONTWAIT)
        except OSError:
            pass
        finally:
            sock.close()

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._forget(client)
            return
        if not data:
            if not client.request:
                self._forget(client)
                return
            client.ended = True
        client.request += data
        if client.ended or len(client.request) > self.limits.max_request or self._complete(client.request):
            self._hand_over(client)

    def _drop_late(self) -> None:
        now = self._clock()
        for client in list(self._reading.values()):
            if now - client.accepted < self.limits.request_deadline:
                break  # oldest first: the rest are younger
            log.debug("%s: dropping a client that sent no whole request within %g s",
                      self._name, self.limits.request_deadline)
            self._forget(client)

    def _forget(self, client: Client) -> None:
        with self._lock:
            self._reading.pop(client.sock, None)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def _hand_over(self, client: Client) -> None:
        self._selector.unregister(client.sock)
        with self._lock:
            self._reading.pop(client.sock, None)
            self._working += 1
        try:
            self._pool.submit(self._serve, client)
        except RuntimeError:  # the pool is shutting down
            self._done(client)

    # -- worker threads --------------------------------------------------------------------
    def _serve(self, client: Client) -> None:
        try:
            self._handle(client)
        except OSError:
            pass  # the client went away or was too slow to take its answer
        except Exception:
            log.exception("%s: request failed", self._name)
        finally:
            self._done(client)

    def _done(self, client: Client) -> None:
        client.sock.close()
        with self._lock:
            self._working -= 1
