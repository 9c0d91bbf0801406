"""Imports point down only (STYLE.md). The contracts live in pyproject.toml
([tool.importlinter]) and import-linter checks them over the whole import graph,
transitive imports included: the pure core imports no other layer and no I/O library,
the shipped agent never imports the lab, agentctl never imports the daemon side,
adapters never import the loop. The direct-import check below also holds the core to
the standard library's I/O modules it must not touch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
AGENT = TOP / "agent"
IO_MODULES = {"httpx", "vici", "prometheus_client", "tenacity", "yaml", "pyroute2", "socket", "subprocess", "select"}


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(TOP / "pyproject.toml")], capture_output=True, text=True, cwd=TOP,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "5 kept" in result.stdout, result.stdout[-2000:]


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((AGENT / "core").rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_only_the_core_and_pure_stdlib(path):
    bad = {name for name in imports_of(path) if name.split(".")[0] in IO_MODULES}
    bad |= {name for name in imports_of(path) if name.startswith("agent.") and not name.startswith("agent.core")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_lab_is_not_part_of_the_agent_package():
    assert not (AGENT / "lab").exists()
    lab_imports = {(p.name, name) for p in AGENT.rglob("*.py") for name in imports_of(p)
                   if name.split(".")[0] == "space_vpn_lab" or name.startswith("agent.lab")}
    assert not lab_imports
