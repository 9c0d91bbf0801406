"""Text from outside the agent (Platform API messages, charon's strings, error texts)
made safe to show: one printable line of bounded length. Applied where such text comes
in, so logs, sd_notify, metrics and terminals never see a newline or an escape sequence.
No side effects.
"""

from __future__ import annotations

ELLIPSIS = "..."


def one_line(text: str, limit: int) -> str:
    """`text` with every character that is not printable (newlines, tabs, terminal
    escapes, bidi overrides) turned into a space, stripped, and cut to at most `limit`
    characters, the cut marked with "..."."""
    line = "".join(c if c.isprintable() else " " for c in text).strip()
    if len(line) <= limit:
        return line
    return line[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS[: limit]
