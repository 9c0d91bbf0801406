"""A wall clock that jumps, for one lab process (the agent), not for the host.

Python imports `sitecustomize` at start-up from its path, so putting this folder first
on PYTHONPATH shifts `time.time()` of that process by the seconds in the file named by
SPACE_VPN_LAB_CLOCK_OFFSET_FILE, re-read on SIGUSR2 (clock_skew.ClockJump writes the
file and sends the signal). Monotonic clocks are left alone, as a real jump of the wall
clock (an NTP step, an operator's `date -s`) leaves them. Time namespaces cannot do
this: they shift only CLOCK_MONOTONIC and CLOCK_BOOTTIME.
"""

import os
import signal
import time

_path = os.environ.get("SPACE_VPN_LAB_CLOCK_OFFSET_FILE")
if _path:
    _real_time = time.time
    _offset = [0.0]

    def _read(*_args) -> None:
        try:
            with open(_path) as f:
                _offset[0] = float(f.read().strip() or 0)
        except (OSError, ValueError):
            pass

    def _shifted() -> float:
        return _real_time() + _offset[0]

    _read()
    time.time = _shifted
    signal.signal(signal.SIGUSR2, _read)
