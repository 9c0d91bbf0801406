"""Imports point down only (STYLE.md): the pure core imports no I/O library, the CLI
never imports the daemon side, adapters never import the loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
IO_LIBRARIES = {"httpx", "vici", "prometheus_client", "tenacity", "yaml", "socket", "subprocess"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    found = sorted((AGENT / package).rglob("*.py"))
    assert found, f"no modules under agent/{package}"
    return found


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_is_pure(path):
    bad = {name for name in imports_of(path) if name.split(".")[0] in IO_LIBRARIES}
    bad |= {name for name in imports_of(path) if name.startswith("agent.") and not name.startswith("agent.core")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("cli"), ids=lambda p: p.name)
def test_cli_never_imports_the_daemon_side(path):
    bad = {n for n in imports_of(path) if n.startswith(("agent.daemon", "agent.adapters", "agent.control.server"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("adapters") + modules("control"), ids=lambda p: p.name)
def test_adapters_never_import_the_loop(path):
    bad = {n for n in imports_of(path) if n.startswith(("agent.daemon", "agent.cli", "agent.lab"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"
