"""Programs some unit tests run (promtool, systemd-analyze): in CI a missing one is a
failure, never a silent skip; on a developer's machine the test is skipped with the
package to install."""

from __future__ import annotations

import os
import shutil

import pytest


def required_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian package {package}; packaging/dev-setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path
