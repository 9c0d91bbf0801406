"""`agentctl status --watch`: the status redrawn in place, like watch(1), for the person
on the box during a maintenance.

No flicker: each frame is built whole, then written in one go over the previous one
(cursor home, every line cleared to its end, the rest of the screen cleared after the
last), in the terminal's alternate screen so the shell's scrollback is left as it was.
Not a terminal (a pipe, a log): frames one after the other, no escape codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
LEAVE = "\x1b[?25h\x1b[?1049l"
HOME = "\x1b[H"
CLEAR_LINE_END = "\x1b[K"
CLEAR_BELOW = "\x1b[J"


def frame(header: str, body: str, *, terminal: bool) -> str:
    lines = [header, "", *body.splitlines()]
    if not terminal:
        return "\n".join(lines) + "\n\n"
    return HOME + "".join(f"{line}{CLEAR_LINE_END}\n" for line in lines) + CLEAR_BELOW


def watch(fetch: Callable[[], str], interval: float, out: TextIO, *, terminal: bool,
          sleep: Callable[[float], None] = time.sleep, now: Callable[[], str] = lambda: time.strftime("%H:%M:%S"),
          frames: int | None = None) -> int:
    """Redraw fetch()'s text every `interval` s until interrupted (or `frames` drawn)."""
    drawn = 0
    if terminal:
        out.write(ENTER)
    try:
        while frames is None or drawn < frames:
            header = f"Every {interval:g}s: agentctl status    {now()}    (Ctrl-C to quit)"
            out.write(frame(header, fetch(), terminal=terminal))
            out.flush()
            drawn += 1
            if frames is None or drawn < frames:
                sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if terminal:
            out.write(LEAVE)
            out.flush()
    return 0
