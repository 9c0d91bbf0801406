"""Shared test set-up: lab tests need root and strongSwan; in CI their absence is a
failure, never a silent skip."""

from __future__ import annotations

import os
import shutil

import pytest


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, charon)"
    if shutil.which("charon-systemd") is None and not os.path.exists("/usr/sbin/charon-systemd"):
        return "charon-systemd is not installed (run packaging/dev-setup.sh)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    return None


def pytest_collection_modifyitems(config, items):
    reason = lab_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "lab" in item.keywords:
            if os.environ.get("CI"):
                item.add_marker(pytest.mark.usefixtures("_fail_in_ci"))
            else:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _fail_in_ci():
    pytest.fail(f"lab test cannot run in CI: {lab_unavailable_reason()}")
