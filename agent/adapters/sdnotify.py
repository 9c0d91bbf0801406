"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.

The protocol is a few lines; a dependency on libsystemd bindings would cost a
compiled package on every gateway for nothing. Fields are separated by newlines, so every
value is sent as one printable line: a STATUS= carrying an API's words must never add a
WATCHDOG_USEC= or MAINPID= of its own.
"""

from __future__ import annotations

import os
import socket

from agent.core.text import one_line

MAX_VALUE = 200  # characters: `systemctl status` shows STATUS= on one line


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str) -> None:
        """notify(READY="1", STATUS="...") -> "READY=1\\nSTATUS=..."; no-op without systemd."""
        if self._address is None:
            return
        payload = "\n".join(f"{key}={one_line(value, MAX_VALUE)}" for key, value in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(payload, self._address)
            except OSError:
                pass  # systemd gone or restarting: nothing useful to do
