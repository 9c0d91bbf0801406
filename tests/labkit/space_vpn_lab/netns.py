"""Enter a network namespace from Python for the span of a `with` block.

A socket keeps the namespace it was created in, so a lab server thread can listen
inside a lab namespace while the rest of the process stays in the root namespace.
Python 3.11 has no os.setns, hence libc through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block's socket creation inside /run/netns/NAME (this thread only)."""
    with _lock, open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())
