"""`agentctl status --watch`: frames drawn over each other without clearing the screen
(no flicker), plain frames into a pipe, and a real agentctl against a real control
socket, stopped with Ctrl-C."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time

import pytest

from agent.cli.watch import CLEAR_BELOW, CLEAR_LINE_END, ENTER, HOME, LEAVE, frame, watch
from tests.unit.test_control import server, socket_dir  # noqa: F401 - fixtures

FULL_CLEAR = "\x1b[2J"


def test_a_terminal_frame_overwrites_the_last_one_line_by_line():
    text = frame("Every 1s: agentctl status", "line one\nline two", terminal=True)
    assert text.startswith(HOME) and text.endswith(CLEAR_BELOW) and FULL_CLEAR not in text
    assert text.count(CLEAR_LINE_END) == 4  # header, blank, two lines
    assert "line two" + CLEAR_LINE_END in text


def test_a_pipe_gets_plain_frames():
    text = frame("header", "body", terminal=False)
    assert "\x1b" not in text and text == "header\n\nbody\n\n"


@pytest.mark.parametrize("terminal", [True, False])
def test_watch_draws_sleeps_and_leaves_the_screen_as_it_was(terminal):
    out, naps, bodies = io.StringIO(), [], iter(["first", "second", "third"])
    assert watch(lambda: next(bodies), 0.5, out, terminal=terminal, sleep=naps.append, now=lambda: "12:00:00",
                 frames=3) == 0
    text = out.getvalue()
    assert naps == [0.5, 0.5]
    assert [w in text for w in ("first", "second", "third")] == [True] * 3
    assert text.count("Every 0.5s: agentctl status    12:00:00") == 3
    assert text.startswith(ENTER) == terminal and text.endswith(LEAVE) == terminal


def test_ctrl_c_ends_the_watch_cleanly():
    out = io.StringIO()

    def interrupted(_seconds):
        raise KeyboardInterrupt
    assert watch(lambda: "body", 1.0, out, terminal=True, sleep=interrupted) == 0
    assert out.getvalue().endswith(LEAVE)


def test_agentctl_watches_a_running_agent(server):  # noqa: F811
    """Also when started with SIGINT ignored (a background job of a script: CI may run
    this way), SIGINT ends the watch."""
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli.agentctl", "--socket", server.path, "status",
                             "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.count("Every 0.2s: agentctl status") >= 2 and "\x1b" not in out  # a pipe: plain frames
    once = subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", server.path, "status"],
                          capture_output=True, text=True, timeout=30).stdout
    assert once.strip() and out.count(once) >= 2  # each frame is what `agentctl status` prints


@pytest.mark.parametrize("bad", ["0", "abc", "-1", "9999"])
def test_agentctl_refuses_a_bad_interval(bad):
    done = subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "status", "--watch", bad],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "seconds from 0.1 to 3600" in done.stderr
