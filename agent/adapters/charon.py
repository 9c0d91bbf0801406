"""charon over VICI: one command Session for the loop thread, one event Session in its
own thread. Library errors become CharonUnavailable / CharonCommandFailed here.

Every streamed call is drained (nothing is sent until a vici generator is iterated),
and every initiate carries a timeout.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import vici
from vici.exception import CommandException, SessionException

from agent.adapters import charon_messages as messages
from agent.core.desired import DesiredConnection
from agent.core.observation import CharonState
from agent.core.text import one_line

log = logging.getLogger(__name__)

EVENT_TYPES = ("ike-updown", "child-updown", "ike-rekey", "child-rekey")


MAX_ERROR_TEXT = 500  # characters of an error message (it quotes charon's own words)


class CharonError(Exception):
    """Base of this adapter's errors; the message is one printable line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, MAX_ERROR_TEXT))


class CharonUnavailable(CharonError):
    """The VICI socket is absent, refused or broke: charon is down or restarting."""


class CharonCommandFailed(CharonError):
    """charon answered a command with success=no."""


#: What to do about the usual reasons a VICI socket cannot be reached, by errno.
_CONNECT_FIXES = {
    errno.ENOENT: "is charon running? (systemctl status strongswan; strongswan.vici_socket)",
    errno.ECONNREFUSED: "charon is not listening on it (starting or stopping?)",
    errno.EACCES: "the agent may not open the socket: run it as root (the unit does), or give it the "
                  "socket's group (charon.plugins.vici.socket in strongswan.conf)",
    errno.EPERM: "the agent may not open the socket: run it as root (the unit does)",
}


def _connect(socket_path: str, timeout: float) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except OSError as e:
        sock.close()
        fix = _CONNECT_FIXES.get(e.errno)
        raise CharonUnavailable(f"cannot reach charon at {socket_path}: {e.strerror or e}"
                                + (f": {fix}" if fix else "")) from e
    return vici.Session(sock)


class CharonClient:
    """Commands, for the loop thread only (VICI allows one command at a time)."""

    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._session: vici.Session | None = None
        self._version: str | None = None  # asked once per connection: it cannot change

    def _call(self, what: str, fn: Callable[[vici.Session], Any]) -> Any:
        if self._session is None:
            self._session = _connect(self.socket_path, self._timeout)
        try:
            return fn(self._session)
        except CommandException as e:
            raise CharonCommandFailed(f"{what}: {e}") from e
        except (OSError, SessionException) as e:
            self.close()
            raise CharonUnavailable(f"{what}: lost charon at {self.socket_path}: {e}") from e

    def close(self) -> None:
        if self._session is not None:
            try:
                self._session.transport.close()
            except OSError:
                pass
            self._session = None
        self._version = None

    def version(self) -> str:
        answer = self._call("version", lambda s: s.version())
        return messages.decode_text(answer.get("version"))

    def observe(self) -> CharonState:
        """One consistent-enough picture: version, loaded conns and keys, all SAs."""
        if self._version is None or self._session is None:
            self._version = self.version()
        version = self._version
        conns = self._call("get-conns", lambda s: s.get_conns())
        shared = self._call("get-shared", lambda s: s.get_shared())
        sas = self._call("list-sas", lambda s: messages.parse_list_sas(list(s.list_sas())))
        return CharonState(
            reachable=True,
            version=version,
            conns=frozenset(messages.decode_text(n) for n in conns.get("conns", [])),
            shared_ids=frozenset(messages.decode_text(n) for n in shared.get("keys", [])),
            sas=sas,
        )

    def stats(self) -> dict[str, Any]:
        """charon's `stats`: uptime, workers, loaded plugins (for `doctor`)."""
        return self._call("stats", lambda s: s.stats())

    def load_tunnel(self, conn: DesiredConnection, number: int) -> None:
        name = conn.tunnel(number).conn_name
        # The shared key first: a conn without its PSK would fail its next initiate.
        self._call(f"load-shared {name}", lambda s: s.load_shared(messages.load_shared_message(conn, number)))
        self._call(f"load-conn {name}", lambda s: s.load_conn(messages.load_conn_message(conn, number)))

    def unload_conn(self, name: str) -> None:
        self._call(f"unload-conn {name}", lambda s: s.unload_conn({"name": name}))

    def unload_shared(self, shared_id: str) -> None:
        self._call(f"unload-shared {shared_id}", lambda s: s.unload_shared({"id": shared_id}))

    def initiate(self, conn_name: str, *, child: bool, timeout_ms: int) -> None:
        message = messages.initiate_message(conn_name, child=child, timeout_ms=timeout_ms)
        what = f"initiate {'child' if child else 'ike'} {conn_name}"
        self._call(what, lambda s: list(s.initiate(message)))

    def terminate_child(self, child_id: str, *, timeout_ms: int) -> None:
        message = messages.terminate_message(child_id=child_id, timeout_ms=timeout_ms)
        self._call(f"terminate child-id {child_id}", lambda s: list(s.terminate(message)))

    def terminate_ike(self, ike_id: str, *, timeout_ms: int) -> None:
        message = messages.terminate_message(ike_id=ike_id, timeout_ms=timeout_ms)
        self._call(f"terminate ike-id {ike_id}", lambda s: list(s.terminate(message)))


@dataclass(frozen=True)
class CharonEvent:
    """An SA came up, went down or rekeyed; the loop re-observes and re-plans."""

    kind: str
    names: tuple[str, ...]  # IKE SA (connection) names the event is about
    up: bool = False  # ike-updown/child-updown: came up (else went down)
    children: tuple[str, ...] = ()  # unique ids of the CHILD_SAs it is about (child-updown)


MAX_EVENT_CHILDREN = 16  # an updown event is about one CHILD_SA; more is not charon


def event_from(kind: str, payload: dict[str, Any]) -> CharonEvent:
    """updown events carry `up = yes` next to the SA sections when something came up;
    child-updown lists the CHILD_SA under its IKE SA's section."""
    up = messages.decode_text(payload.get("up")) == "yes"
    names = tuple(messages.decode_text(name) for name in payload if name != "up")
    children = [messages.decode_text(child.get("uniqueid"))
                for section in payload.values() if isinstance(section, dict)
                for child in (section.get("child-sas") or {}).values() if isinstance(child, dict)]
    return CharonEvent(kind, names, up, tuple(children[:MAX_EVENT_CHILDREN]))


@dataclass(frozen=True)
class CharonConnected:
    """The event session (re)connected: charon may have restarted, reload everything."""


@dataclass(frozen=True)
class CharonDisconnected:
    reason: str


class CharonEventListener:
    """Listens on its own Session (a registered Session cannot send commands) and posts
    events to the loop's inbox. Reconnects for ever, once a second."""

    def __init__(self, socket_path: str, post: Callable[[object], None], *, poll: float = 1.0) -> None:
        self._socket_path = socket_path
        self._post = post
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vici-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        connected = False
        while not self._stop.is_set():
            try:
                session = _connect(self._socket_path, self._poll)
                listener = session.listen(list(EVENT_TYPES), timeout=self._poll)
                connected = True
                self._post(CharonConnected())
                for event_type, payload in listener:
                    if self._stop.is_set():
                        break
                    if event_type is not None:
                        self._post(event_from(messages.decode_text(event_type), payload or {}))
                listener.close()
                session.transport.close()
            except (CharonUnavailable, OSError, SessionException) as e:
                if connected:
                    connected = False
                    self._post(CharonDisconnected(str(e)))
                self._stop.wait(self._poll)
            except Exception:  # keep the thread alive; the loop must hear about charon
                log.exception("VICI event listener failed; reconnecting")
                self._stop.wait(self._poll)
