"""The agent marks itself non-dumpable with a core limit of 0 before it reads a secret,
and so does the doctor (`space-vpn-agent doctor`, `agentctl doctor`), which reads the
token and the PSKs too. Checked in a fresh interpreter (the flag is per process and
sticks) with PR_GET_DUMPABLE: /proc/self/status has no line for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

REPORT = """
import json, resource
from agent.adapters.core_dumps import is_dumpable
print(json.dumps({"dumpable": is_dumpable(), "core": list(resource.getrlimit(resource.RLIMIT_CORE))}))
"""


#: Records the process's state when the doctor loads the config: the first secret it reads
#: (PSK files come with the config, the token after it).
AT_CONFIG_LOAD = """
import json, resource
from agent.adapters.core_dumps import is_dumpable
from agent.doctor import report
def state():
    return {"dumpable": is_dumpable(), "core": list(resource.getrlimit(resource.RLIMIT_CORE))}
seen = {}
real_load_config = report.load_config
def load_config(path):
    seen.update(state())
    return real_load_config(path)
report.load_config = load_config
"""


def run(code: str, report: str = REPORT) -> dict:
    done = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, cwd=REPO,
                          timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_interpreter_is_dumpable_to_begin_with():
    assert run("")["dumpable"] is True


def test_forbid_core_dumps_clears_the_flag_and_the_limit():
    assert run("from agent.adapters.core_dumps import forbid_core_dumps; forbid_core_dumps()") == {"dumpable": False, "core": [0, 0]}


def test_the_daemon_entry_point_does_it_before_reading_the_config(tmp_path):
    # A config that does not exist: main() returns 2 after loading it, and has already
    # marked the process by then.
    code = ("from agent.daemon.main import main\n"
            f"assert main(['check-config', '--config', {str(tmp_path / 'absent.yaml')!r}]) == 2\n")
    assert run(code) == {"dumpable": False, "core": [0, 0]}


@pytest.mark.parametrize("entry_point", ["agent.daemon.main", "agent.cli.agentctl"])
def test_the_doctor_does_it_before_reading_the_config(tmp_path, entry_point):
    # A config that does not exist: the doctor still loads it (and reports it as FAIL,
    # exit 2), and has marked the process by then, in either command.
    code = (AT_CONFIG_LOAD + f"from {entry_point} import main\n"
            f"assert main(['doctor', '--config', {str(tmp_path / 'absent.yaml')!r}, '--json']) == 2\n"
            "print(json.dumps({'at_config_load': seen, 'at_exit': state()}))\n")
    marked = {"dumpable": False, "core": [0, 0]}
    assert run(code, report="") == {"at_config_load": marked, "at_exit": marked}
