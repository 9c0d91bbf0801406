"""Wall-clock jumps for one lab process (see sitecustomize.py beside this file)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
OFFSET_ENV = "SPACE_VPN_LAB_CLOCK_OFFSET_FILE"


class ClockJump:
    """The environment that makes a process's wall clock jumpable, and the jumps."""

    def __init__(self, offset_file: Path) -> None:
        self.offset_file = offset_file
        offset_file.write_text("0\n")

    def env(self) -> dict[str, str]:
        paths = [str(FOLDER), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"PYTHONPATH": os.pathsep.join(paths), OFFSET_ENV: str(self.offset_file)}

    def set(self, pid: int, offset_s: float) -> None:
        """The process's wall clock is now real time + offset_s."""
        self.offset_file.write_text(f"{offset_s}\n")
        os.kill(pid, signal.SIGUSR2)
