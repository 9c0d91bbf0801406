"""The daemon's side of the control socket: a unix socket, mode 0660, served by a
BoundedServer (at most 16 clients, each with a deadline). Reads come from the latest
Snapshot; writes are posted to the loop's inbox, with the peer's pid and uid.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.adapters.bounded_server import BoundedServer, Client, Limits
from agent.control import protocol
from agent.core.snapshot import Snapshot

log = logging.getLogger(__name__)

LOOP_ANSWER_TIMEOUT = 5.0  # s
ANSWER_RESERVE = 1.0  # s of a connection's deadline kept for sending the answer
LIMITS = Limits(max_clients=16, request_deadline=3.0, connection_deadline=LOOP_ANSWER_TIMEOUT + 3.0,
                max_request=protocol.MAX_MESSAGE)


class ControlServer:
    def __init__(
        self,
        path: str,
        snapshot: Callable[[], Snapshot],
        post: Callable[[object], None],
        make_reload: Callable[[], object],
        make_request: Callable[[str, dict, object, str], object] | None = None,
        limits: Limits = LIMITS,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._post = post
        self._make_reload = make_reload
        self._make_request = make_request or (lambda command, args, reply, peer: (command, args, reply, peer))
        self._limits = limits
        self._server: BoundedServer | None = None

    def start(self) -> None:
        socket_path = Path(self.path)
        socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if socket_path.is_socket():
            socket_path.unlink()  # left by a previous run that was killed
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o117)  # born 0660: no window where others could connect
        try:
            listener.bind(self.path)
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        busy = protocol.encode({"id": None, "ok": False, "error": f"the agent is busy: {self._limits.max_clients} "
                                                                  "control clients at once; try again"})
        self._server = BoundedServer(listener, "control", lambda request: b"\n" in request, self._answer,
                                     busy=busy, limits=self._limits)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            Path(self.path).unlink(missing_ok=True)

    def _answer(self, client: Client) -> None:
        """One request, one answer line (on a worker thread of the BoundedServer)."""
        request_id = None
        try:
            message = protocol.read_message(io.BytesIO(client.request))
            request_id = message.get("id")
            answer = {"id": request_id, "ok": True, "result": self._dispatch(message, client)}
        except (protocol.ProtocolError, ValueError) as e:
            answer = {"id": request_id, "ok": False, "error": str(e)}
        except Exception:
            log.exception("control request failed")
            answer = {"id": request_id, "ok": False, "error": "internal error (see the agent's log)"}
        try:
            data = protocol.encode(answer)
        except (protocol.ProtocolError, TypeError, ValueError) as e:
            data = protocol.encode({"id": None, "ok": False, "error": str(e)})
        client.send(data)

    def _dispatch(self, message: dict[str, Any], client: Client) -> Any:
        command, args = protocol.checked_request(message)
        if command == "status":
            return self._snapshot().to_dict()
        if command == "ping":
            return {"pong": True}
        if command == "reload":
            log.info("reload asked on the control socket (%s)", peer_of(client.sock))
            self._post(self._make_reload())
            return {"accepted": True}
        return self._ask_loop(command, args, peer_of(client.sock), client.remaining())

    def _ask_loop(self, command: str, args: dict[str, Any], peer: str, remaining: float) -> Any:
        """Writes go through the loop's inbox; wait for its answer."""
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._post(self._make_request(command, args, reply, peer))
        wait = max(0.0, min(LOOP_ANSWER_TIMEOUT, remaining - ANSWER_RESERVE))
        try:
            ok, result = reply.get(timeout=wait)
        except queue.Empty as e:
            raise ValueError(f"the agent's loop did not answer within {wait:.3g} s") from e
        if not ok:
            raise ValueError(result)
        return result


def peer_of(sock: socket.socket) -> str:
    """Who is on the other end of a unix socket, from the kernel (SO_PEERCRED)."""
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))
    except OSError:
        return "peer unknown"
    return f"pid {pid}, uid {uid}"
