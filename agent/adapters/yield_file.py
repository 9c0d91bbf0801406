"""The split-brain guard's word to keepalived: a track file (keepalived.conf
`track_file ... weight 0`) holding "1" while this node yields its virtual address to
another holder, "0" otherwise. keepalived puts its instances in FAULT on a non-zero
value, so the address leaves this node and only one node answers for it again.

Level-triggered: each pass reads the file and writes it only when it says otherwise
(keepalived resets it to 0 when it starts; a restarted agent finds an old "1"). Written
in place: keepalived re-reads the file when it is closed after writing.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class YieldFile:
    def __init__(self, path: str) -> None:
        self._path = path
        self._said: bool | None = None  # what the log last said
        self._error: str | None = None  # the last write error logged

    def sync(self, yielding: bool) -> None:
        wanted = "1" if yielding else "0"
        try:
            with open(self._path) as f:
                if f.read(16).strip() == wanted:
                    self._note(yielding)
                    return
        except OSError:
            pass  # not there yet: written below
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(wanted + "\n")
        except OSError as e:
            if self._error != e.strerror:
                log.error("ha: cannot write the yield file %s (%s): keepalived is not told to step aside; "
                          "check ha.yield_file", self._path, e.strerror or e)
            self._error = e.strerror
            return
        self._error = None
        self._note(yielding)

    def _note(self, yielding: bool) -> None:
        if yielding != self._said:
            if yielding or self._said is not None:
                log.warning("ha: %s (%s)", "yielding the virtual address: keepalived told to step aside"
                            if yielding else "no longer yielding: keepalived may take the address again", self._path)
            self._said = yielding
