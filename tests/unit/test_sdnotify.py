"""sd_notify without libsystemd: datagrams to $NOTIFY_SOCKET (path or abstract
address), silence without systemd."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from agent.adapters import sdnotify
from agent.adapters.sdnotify import SystemdNotifier


@pytest.fixture
def listener():
    directory = tempfile.mkdtemp(prefix="svpn-notify-", dir="/tmp")
    path = str(Path(directory) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_ready_reaches_a_path_socket(listener):
    path, sock = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.notify(READY="1")
    assert sock.recv(4096) == b"READY=1"


def test_several_fields_go_in_one_datagram(listener):
    path, sock = listener
    SystemdNotifier({"NOTIFY_SOCKET": path}).notify(READY="1", STATUS="acme-space/office: tunnel 1 active", WATCHDOG="1")
    assert sock.recv(4096) == b"READY=1\nSTATUS=acme-space/office: tunnel 1 active\nWATCHDOG=1"


def test_abstract_address_with_at_sign():
    name = f"svpn-notify-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        notifier.notify(STOPPING="1")
        assert sock.recv(4096) == b"STOPPING=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
def test_without_notify_socket_nothing_is_sent(monkeypatch, environ):
    def no_socket(*args, **kwargs):
        raise AssertionError("a socket was opened without NOTIFY_SOCKET")

    monkeypatch.setattr(sdnotify.socket, "socket", no_socket)
    notifier = SystemdNotifier(environ)
    assert notifier.enabled is False
    assert notifier.notify(READY="1") is None


def test_reads_the_process_environment_by_default(monkeypatch, listener):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = SystemdNotifier()
    notifier.notify(READY="1")
    assert sock.recv(4096) == b"READY=1"


def test_vanished_systemd_socket_is_ignored():
    directory = tempfile.mkdtemp(prefix="svpn-notify-", dir="/tmp")
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(Path(directory) / "gone")})
        assert notifier.enabled
        assert notifier.notify(WATCHDOG="1") is None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
