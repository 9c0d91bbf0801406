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
    # Most text is printable already: one C-level check instead of a look at each
    # character (charon's list-sas answer is some 1 500 strings a pass at 50 connections).
    printable = text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)
    line = printable.strip()
    if len(line) <= limit:
        return line
    return line[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS[: limit]
