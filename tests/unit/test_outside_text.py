"""Text from outside the agent, path by path: the helper itself, then each place such text
leaves the agent (sd_notify, charon's strings and errors, agentctl's terminal). A newline
never adds an sd_notify field, an escape never reaches a terminal, no text grows unbounded.
(The Platform API's error texts: test_heroku_limits.)"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.adapters.charon import CharonCommandFailed, CharonError, event_from
from agent.adapters.charon_messages import MAX_TEXT, decode_text, parse_list_sas
from agent.adapters.sdnotify import MAX_VALUE, SystemdNotifier
from agent.cli.render import render_status
from agent.core.payload import MAX_STATUS_MESSAGE, parse_vpn_answer
from agent.core.snapshot import Health
from agent.core.text import one_line
from tests.unit.test_render import office, snapshot, tunnel_view
from tests.unit.test_sdnotify import listener  # noqa: F401 (the notify socket fixture)

HOSTILE = "maintenance\nWATCHDOG_USEC=1\nMAINPID=1\r\t\x1b]0;owned\x07\x1b[2J\x7f\u202eexe.txt\x00"


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("supplied CIDR block already in use", 100, "supplied CIDR block already in use"),
    ("two\nlines", 100, "two lines"),
    ("\x1b[31mred\x1b[0m", 100, "[31mred [0m"),
    ("tab\there\r\n", 100, "tab here"),
    ("bidi \u202eoverride", 100, "bidi  override"),
    ("ünïcödé stays", 100, "ünïcödé stays"),
    ("abcdefghij", 10, "abcdefghij"),
    ("abcdefghijk", 10, "abcdefg..."),
    ("abcdef", 2, ".."),
    ("", 10, ""),
    ("\n\n", 10, ""),
], ids=lambda v: repr(v)[:20])
def test_one_line(text, limit, expected):
    assert one_line(text, limit) == expected


def test_one_line_of_anything_is_printable_and_bounded():
    for limit in (0, 1, 3, 4, 50):
        line = one_line(HOSTILE * 20, limit)
        assert line.isprintable() and len(line) <= limit


# -- sd_notify -----------------------------------------------------------------------

def test_a_newline_in_status_adds_no_field(listener):
    path, sock = listener
    SystemdNotifier({"NOTIFY_SOCKET": path}).notify(READY="1", STATUS=f"acme-space/office: {HOSTILE}", WATCHDOG="1")
    fields = sock.recv(4096).decode().split("\n")
    assert [f.split("=", 1)[0] for f in fields] == ["READY", "STATUS", "WATCHDOG"]
    assert fields[1].startswith("STATUS=acme-space/office: maintenance WATCHDOG_USEC=1 MAINPID=1")
    assert fields[1].isprintable()


def test_a_long_status_is_cut(listener):
    path, sock = listener
    SystemdNotifier({"NOTIFY_SOCKET": path}).notify(STATUS="x" * 10_000)
    assert len(sock.recv(65536)) == len("STATUS=") + MAX_VALUE


# -- charon's strings ----------------------------------------------------------------

def test_charon_values_are_read_as_one_bounded_line():
    assert decode_text(HOSTILE.encode()) == one_line(HOSTILE, MAX_TEXT)
    assert decode_text(b"5.9.13") == "5.9.13"
    assert decode_text(b"\xff\xfe junk") == "\ufffd\ufffd junk"
    assert len(decode_text(b"v" * 100_000)) == MAX_TEXT
    sas = parse_list_sas([{"svpn-x-t1": {"uniqueid": b"1", "state": b"ESTABLISHED\n\x1b[2J",
                                          "remote-host": HOSTILE.encode(), "child-sas": {}}}])
    ike = sas["svpn-x-t1"].ike_sas[0]
    assert ike.remote_host.isprintable() and "\n" not in ike.remote_host


def test_charon_errors_and_event_names_are_one_line():
    error = CharonCommandFailed(f"load-conn svpn-x-t1: {HOSTILE}")
    assert isinstance(error, CharonError) and str(error).isprintable()
    assert str(error).startswith("load-conn svpn-x-t1: maintenance WATCHDOG_USEC=1")
    assert len(str(CharonError("e" * 100_000))) <= 500
    event = event_from("child-updown", {"up": b"yes", "svpn-x-t1\n\x1b[2J": {}})
    assert event.names == ("svpn-x-t1  [2J",)


# -- the Platform API's status messages (payload) ------------------------------------

def test_status_messages_are_one_bounded_line():
    answer = parse_vpn_answer({"status": "pending", "status_message": HOSTILE * 1000})
    assert answer.status_message.isprintable() and len(answer.status_message) <= MAX_STATUS_MESSAGE


# -- agentctl status on a terminal ---------------------------------------------------

def test_status_shows_relayed_texts_without_escapes():
    """Whatever the agent relays (an older agent may not clean its texts), the terminal
    gets printable lines only: no escape sequence, no injected line."""
    hostile = snapshot(office(Health.DOWN, f"waiting: {HOSTILE}", (
        tunnel_view(1, api_status_message=HOSTILE, ike_state="DOWN\x1b[2J", problem=HOSTILE),
        tunnel_view(2),
    ), api_error=HOSTILE, heroku_note=HOSTILE, mode_reason=HOSTILE), errors=(HOSTILE,))
    text = render_status(json.loads(json.dumps(hostile.to_dict())))
    assert all(line.isprintable() for line in text.splitlines())
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert not any(line.startswith(("WATCHDOG_USEC", "MAINPID")) for line in text.splitlines())
    assert "API error: maintenance WATCHDOG_USEC=1 MAINPID=1" in text


def test_status_cuts_a_huge_field():
    huge = snapshot(office(Health.DOWN, "s" * 1_000_000, (tunnel_view(1), tunnel_view(2))))
    text = render_status(huge.to_dict())
    assert max(len(line) for line in text.splitlines()) < 1100


@given(st.text(), st.integers(min_value=0, max_value=300))
def test_one_line_takes_printable_text_as_it_is_and_agrees_with_a_look_at_each_character(text, limit):
    by_character = "".join(c if c.isprintable() else " " for c in text).strip()
    expected = by_character if len(by_character) <= limit else by_character[:max(limit - 3, 0)] + "..."[:limit]
    assert one_line(text, limit) == expected
