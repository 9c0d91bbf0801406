"""Helpers shared by the lab tests."""

from __future__ import annotations

import os
import shutil

import pytest

from agent.adapters.charon_messages import parse_list_sas
from agent.core.model import object_name
from space_vpn_lab.fake_api import SPACE, VPN

KEY = f"{SPACE}-{VPN}"
T1, T2 = object_name(KEY, 1), object_name(KEY, 2)
BRINGUP_TIMEOUT = 60
#: Pings a lab run may lose with nothing happening at all: the host lab's userspace ESP
#: drops a single ping now and then (the 30-minute soak: 8 in 123,203 with no event,
#: more on a loaded CI machine). Tests that claim "nothing lost" over a long run allow
#: this one, and check separately that no SA changed.
LAB_FLOOR_PINGS = 1


def customer_sas(lab):
    """What the customer charon itself reports, independent of the agent's status."""
    session = lab.customer_charon.session()
    try:
        return parse_list_sas(list(session.list_sas()))
    finally:
        session.transport.close()


def assert_no_secret(text: str, secrets: tuple[str, ...]) -> None:
    leaked = [i for i, s in enumerate(secrets) if s in text]
    assert not leaked, f"secret #{leaked} found in output (value not shown)"


def require_keepalived() -> None:
    """The HA lab runs Debian's keepalived: missing, that is a failure in CI, a skip elsewhere."""
    if shutil.which("keepalived") is not None:
        return
    reason = "keepalived is not installed (packaging/dev-setup.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
