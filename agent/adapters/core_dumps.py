"""No core dump of the agent, ever: it holds the API token and the PSKs in memory, and a
watchdog kill (SIGABRT) would otherwise write them to disk. systemd sets LimitCORE=0 as
well; this covers a start by hand and makes /proc/<pid>/mem unreadable to ptrace peers.
The daemon and the doctor (which reads the same secrets) call it before reading any.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

log = logging.getLogger(__name__)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def forbid_core_dumps() -> None:
    """Mark the process non-dumpable and its core size limit 0. Logs (never raises) if
    the kernel refuses: the agent still runs, without that protection."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as e:
        log.warning("cannot set the core size limit to 0: %s", e)
    try:
        if _prctl()(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("cannot mark the process non-dumpable: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as e:
        log.warning("cannot mark the process non-dumpable: %s", e)


def is_dumpable() -> bool:
    """What the kernel says (PR_GET_DUMPABLE)."""
    return _prctl()(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0
