"""Host names as probe targets: the syntax check, and the resolver driven round by round
with a fake getaddrinfo and a fake clock (what it picks, refuses, keeps and logs), plus
its thread: a lookup that blocks never blocks the caller."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.adapters.probe_names import FAILED_RETRY, NameResolver, host_name_problem

NAME = "app.acme.internal"


class FakeDns:
    """getaddrinfo's shape: answers[name] is a list of addresses or an exception."""

    def __init__(self, **answers) -> None:
        self.answers = {name.replace("_", "."): answer for name, answer in answers.items()}
        self.calls: list[str] = []

    def __call__(self, host, port, family=0, type=0, *rest):
        assert family == socket.AF_INET and port is None  # IPv4 only, no service lookup
        self.calls.append(host)
        answer = self.answers.get(host, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, BaseException):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0)) for address in answer]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def resolver(dns: FakeDns, names: dict[str, float] | None = None):
    changes: list[int] = []
    clock = Clock()
    r = NameResolver(lambda: changes.append(1), getaddrinfo=dns, clock=clock)
    r.set_names(names if names is not None else {NAME: 60.0})
    return r, clock, changes


def warnings_and_infos(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.adapters.probe_names"]


# --- syntax ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, problem", [
    ("app.acme.internal", None),
    ("app.acme.internal.", None),
    ("a", None),
    ("x1-2.herokuapp.com", None),
    ("", "empty"),
    (".", "empty"),
    ("a..b", "'' is not a DNS label (letters, digits and inner '-', 1-63 characters)"),
    ("-a.b", "'-a' is not a DNS label (letters, digits and inner '-', 1-63 characters)"),
    ("a_b.c", "'a_b' is not a DNS label (letters, digits and inner '-', 1-63 characters)"),
    ("a" * 64, f"'{'a' * 64}' is not a DNS label (letters, digits and inner '-', 1-63 characters)"),
    (".".join(["a" * 63] * 4), "longer than 253 characters"),
    ("10.0.0", "a name cannot end in a number; an IPv4 address is four numbers (e.g. 10.0.0.10)"),
    ("1", "a name cannot end in a number; an IPv4 address is four numbers (e.g. 10.0.0.10)"),
    ("0x0a000001", "reads as an IPv4 address in another notation; write it as four numbers (e.g. 10.0.0.10)"),
])
def test_host_name_problem(name, problem):
    assert host_name_problem(name) == problem


_LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@given(st.lists(_LABELS, min_size=1, max_size=5).map(".".join))
def test_a_name_is_accepted_exactly_when_it_cannot_read_as_an_address(name):
    problem = host_name_problem(name)
    looks_numeric = name.split(".")[-1].isdigit()
    try:
        socket.inet_aton(name)
        looks_numeric = True
    except OSError:
        pass
    assert (problem is None) == (not looks_numeric)


@given(st.text(max_size=40))
def test_any_text_gets_an_answer_and_never_an_exception(text):
    problem = host_name_problem(text)
    assert problem is None or isinstance(problem, str)
    if problem is None:  # whatever passes is plain DNS syntax
        assert all(c.isascii() and (c.isalnum() or c in ".-") for c in text)


# --- resolving ----------------------------------------------------------------------------

def test_a_new_name_resolves_at_once_and_again_every_interval(caplog):
    caplog.set_level(logging.INFO)
    dns = FakeDns(app_acme_internal=["10.0.0.20"])
    r, clock, changes = resolver(dns, {NAME: 30.0})
    assert r.address(NAME) is None
    assert r.resolve_due() == pytest.approx(30.0)
    assert r.address(NAME) == "10.0.0.20" and changes == [1]
    clock.now += 29.0
    r.resolve_due()
    assert dns.calls == [NAME]  # not due yet
    clock.now += 1.0
    r.resolve_due()
    assert dns.calls == [NAME, NAME]
    assert warnings_and_infos(caplog) == ["probe target app.acme.internal is 10.0.0.20"]
    assert changes == [1]  # same address: nothing to tell


def test_the_name_moves_and_the_move_is_logged(caplog):
    caplog.set_level(logging.INFO)
    dns = FakeDns(app_acme_internal=["10.0.0.20"])
    r, clock, changes = resolver(dns, {NAME: 1.0})
    r.resolve_due()
    dns.answers[NAME] = ["10.0.0.21"]
    clock.now += 1.0
    r.resolve_due()
    assert r.address(NAME) == "10.0.0.21" and len(changes) == 2
    assert warnings_and_infos(caplog)[-1] == "probe target app.acme.internal moved from 10.0.0.20 to 10.0.0.21"


def test_an_unresolvable_name_has_no_address_is_logged_once_and_retried_sooner(caplog):
    caplog.set_level(logging.INFO)
    dns = FakeDns()
    r, clock, changes = resolver(dns, {NAME: 60.0})
    assert r.resolve_due() == pytest.approx(FAILED_RETRY)
    for _ in range(3):
        clock.now += FAILED_RETRY
        r.resolve_due()
    assert r.address(NAME) is None and len(dns.calls) == 4
    assert warnings_and_infos(caplog) == [
        "probe target app.acme.internal: no IPv4 address: [Errno -2] Name or service not known"]
    assert changes == []  # no address before, none now
    dns.answers[NAME] = ["10.0.0.20"]
    clock.now += FAILED_RETRY
    r.resolve_due()
    assert r.address(NAME) == "10.0.0.20" and changes == [1]


def test_a_short_resolve_interval_also_bounds_the_retry():
    r, clock, _ = resolver(FakeDns(), {NAME: 2.0})
    assert r.resolve_due() == pytest.approx(2.0)


@pytest.mark.parametrize("answer, refused", [
    (["8.8.8.8"], "8.8.8.8"),
    (["10.0.0.20", "198.51.100.7"], "198.51.100.7"),  # one public answer spoils the name
    (["127.0.0.1"], "127.0.0.1"),
    (["100.64.0.1"], "100.64.0.1"),
])
def test_a_name_with_a_public_address_is_refused(caplog, answer, refused):
    dns = FakeDns(app_acme_internal=answer)
    r, _clock, _ = resolver(dns)
    r.resolve_due()
    assert r.address(NAME) is None
    assert warnings_and_infos(caplog) == [
        f"probe target app.acme.internal: refusing {refused}: not in 10.0.0.0/8, 172.16.0.0/12, "
        "192.168.0.0/16 (probes never leave the private ranges)"]


def test_a_name_that_turns_public_loses_its_address(caplog):
    dns = FakeDns(app_acme_internal=["10.0.0.20"])
    r, clock, changes = resolver(dns, {NAME: 1.0})
    r.resolve_due()
    dns.answers[NAME] = ["203.0.113.5"]
    clock.now += 1.0
    r.resolve_due()
    assert r.address(NAME) is None and len(changes) == 2


@pytest.mark.parametrize("error", [socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
                                   socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution"),
                                   OSError(110, "Connection timed out")])
def test_a_temporary_failure_keeps_the_last_address(caplog, error):
    dns = FakeDns(app_acme_internal=["10.0.0.20"])
    r, clock, changes = resolver(dns, {NAME: 1.0})
    r.resolve_due()
    dns.answers[NAME] = error
    for _ in range(3):
        clock.now += 1.0
        r.resolve_due()
    assert r.address(NAME) == "10.0.0.20" and changes == [1]
    assert len([m for m in warnings_and_infos(caplog) if "cannot resolve it now" in m]) == 1
    assert warnings_and_infos(caplog)[-1].endswith("probing the last address, 10.0.0.20")
    dns.answers[NAME] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    clock.now += 1.0
    r.resolve_due()
    assert r.address(NAME) is None and len(changes) == 2  # the name is gone for good


def test_a_temporary_failure_without_a_last_address_means_no_address():
    dns = FakeDns(app_acme_internal=socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    r, _clock, _ = resolver(dns)
    r.resolve_due()
    assert r.address(NAME) is None


def test_rotating_answers_keep_the_current_address():
    dns = FakeDns(app_acme_internal=["10.0.0.20", "10.0.0.21"])
    r, clock, changes = resolver(dns, {NAME: 1.0})
    r.resolve_due()
    for answer in (["10.0.0.21", "10.0.0.20"], ["10.0.0.21", "10.0.0.22", "10.0.0.20"]):
        dns.answers[NAME] = answer
        clock.now += 1.0
        r.resolve_due()
        assert r.address(NAME) == "10.0.0.20"
    dns.answers[NAME] = ["10.0.0.22", "10.0.0.21"]
    clock.now += 1.0
    r.resolve_due()
    assert r.address(NAME) == "10.0.0.22" and len(changes) == 2


def test_names_no_longer_wanted_are_forgotten():
    dns = FakeDns(app_acme_internal=["10.0.0.20"], other_internal=["10.0.0.30"])
    r, clock, _ = resolver(dns, {NAME: 1.0, "other.internal": 1.0})
    r.resolve_due()
    r.set_names({"other.internal": 1.0})
    clock.now += 1.0
    r.resolve_due()
    assert r.address(NAME) is None and r.address("other.internal") == "10.0.0.30"
    assert dns.calls.count(NAME) == 1


@given(st.ip_addresses(v=4))
def test_only_rfc1918_answers_are_ever_used(address):
    r, _clock, _ = resolver(FakeDns(app_acme_internal=[str(address)]))
    r.resolve_due()
    private = any(address in ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
    assert r.address(NAME) == (str(address) if private else None)


# --- the thread ----------------------------------------------------------------------------

def test_a_blocking_lookup_never_blocks_the_caller():
    release = threading.Event()
    entered = threading.Event()

    def slow(host, port, family=0, type=0, *rest):
        entered.set()
        release.wait(5.0)  # bounded: the test releases it long before
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.20", 0))]

    changed = threading.Event()
    r = NameResolver(changed.set, getaddrinfo=slow)
    r.start()
    try:
        r.set_names({NAME: 60.0})
        assert entered.wait(2.0)
        began = time.monotonic()
        r.set_names({NAME: 60.0, "other.internal": 60.0})
        assert r.address(NAME) is None
        assert time.monotonic() - began < 0.1
        release.set()
        assert changed.wait(2.0) and r.address(NAME) == "10.0.0.20"
    finally:
        release.set()
        r.stop()
    assert not r._thread.is_alive()


def test_the_thread_stops_promptly_when_idle():
    r = NameResolver(lambda: None, getaddrinfo=FakeDns())
    r.start()
    began = time.monotonic()
    r.stop()
    assert time.monotonic() - began < 1.0 and not r._thread.is_alive()
