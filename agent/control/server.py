"""The daemon's side of the control socket: a unix socket, mode 0660, one thread per
client. Reads come from the latest Snapshot; writes are posted to the loop's inbox.
"""

from __future__ import annotations

import logging
import os
import queue
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.control import protocol
from agent.core.snapshot import Snapshot

log = logging.getLogger(__name__)


class ControlServer:
    def __init__(
        self,
        path: str,
        snapshot: Callable[[], Snapshot],
        post: Callable[[object], None],
        make_reload: Callable[[], object],
        make_request: Callable[[str, dict, object], object] | None = None,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._post = post
        self._make_reload = make_reload
        self._make_request = make_request or (lambda command, args, reply: (command, args, reply))
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        socket_path = Path(self.path)
        socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if socket_path.is_socket():
            socket_path.unlink()  # left by a previous run that was killed
        handler = _make_handler(self._dispatch)
        old_umask = os.umask(0o117)  # born 0660: no window where others could connect
        try:
            self._server = socketserver.ThreadingUnixStreamServer(self.path, handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            Path(self.path).unlink(missing_ok=True)

    def _dispatch(self, message: dict[str, Any]) -> Any:
        command = message.get("command")
        if command == "status":
            return self._snapshot().to_dict()
        if command == "ping":
            return {"pong": True}
        if command == "reload":
            self._post(self._make_reload())
            return {"accepted": True}
        if command in ("drain", "undrain", "show-config"):
            return self._ask_loop(command, message.get("args") or {})
        raise ValueError(f"unknown command {command!r} (known: {', '.join(protocol.COMMANDS)})")


    def _ask_loop(self, command: str, args: dict[str, Any]) -> Any:
        """Writes go through the loop's inbox; wait for its answer."""
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._post(self._make_request(command, args, reply))
        try:
            ok, result = reply.get(timeout=LOOP_ANSWER_TIMEOUT)
        except queue.Empty as e:
            raise ValueError(f"the agent's loop did not answer within {LOOP_ANSWER_TIMEOUT:g} s") from e
        if not ok:
            raise ValueError(result)
        return result


LOOP_ANSWER_TIMEOUT = 5.0  # s


def _make_handler(dispatch: Callable[[dict[str, Any]], Any]) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 10

        def handle(self) -> None:
            request_id = None
            try:
                message = protocol.read_message(self.rfile)
                request_id = message.get("id")
                answer = {"id": request_id, "ok": True, "result": dispatch(message)}
            except (protocol.ProtocolError, ValueError) as e:
                answer = {"id": request_id, "ok": False, "error": str(e)}
            except Exception:
                log.exception("control request failed")
                answer = {"id": request_id, "ok": False, "error": "internal error (see the agent's log)"}
            try:
                try:
                    data = protocol.encode(answer)
                except protocol.ProtocolError as e:
                    data = protocol.encode({"id": request_id, "ok": False, "error": str(e)})
                self.wfile.write(data)
            except OSError:
                pass  # the client went away

    return Handler
