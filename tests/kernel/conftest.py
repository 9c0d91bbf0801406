"""The kernel lab's VM boots as soon as collection ends, in a thread of its own, and
runs while the host's lab tests run (they mostly wait on tunnels and timers); its
checks are moved after them, so they find the VM done instead of waiting 6 minutes
for it. Unit and packaging tests, which keep both CPUs busy, come after the checks.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest

from space_vpn_lab.kernel_vm import KernelVmError, kill_group, run_in_vm, vng_available

MODULE = "space_vpn_lab.kernel_agent_scenarios"  # registers its scenarios next to the manual ones
VM_TIMEOUT_S = 900.0
_HERE = Path(__file__).resolve().parent


class BackgroundVm:
    """One VM run; `results()` waits for it."""

    def __init__(self) -> None:
        self.results_dir = Path(tempfile.mkdtemp(prefix="kernel-lab-"))
        self._results: dict = {}
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="kernel-vm", daemon=True)
        self._proc = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The session ends (done, interrupted, -x): no VM outlives it."""
        if self._proc is not None and self._proc.poll() is None:
            kill_group(self._proc)
        self._thread.join(10)

    def _started(self, proc) -> None:
        self._proc = proc

    def _run(self) -> None:
        try:
            self._results = run_in_vm(MODULE, [], self.results_dir, timeout=VM_TIMEOUT_S, started=self._started)
        except KernelVmError as e:
            self._results, self._error = e.results or {}, str(e)
        except Exception as e:  # noqa: BLE001 - reported by the checks, never lost in a thread
            self._error = f"{type(e).__name__}: {e}"

    def results(self) -> dict:
        self._thread.join(VM_TIMEOUT_S + 60)
        if self._thread.is_alive():
            return {"error": "the kernel VM thread did not finish"}
        return {**self._results, "error": self._error}


_VM: BackgroundVm | None = None


def _is_kernel(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).resolve().parent == _HERE


def _rank(item: pytest.Item) -> int:
    """lab (while the VM runs), then the kernel checks, then everything else."""
    parts = Path(str(item.fspath)).resolve().parts
    if "lab" in parts and "tests" in parts:
        return 0
    return 1 if _is_kernel(item) else 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order within each group is kept


def pytest_collection_finish(session: pytest.Session) -> None:
    """After deselection (-k, -m): boot the VM only if a kernel check is to run."""
    global _VM
    if session.config.option.collectonly:
        return
    if any(_is_kernel(item) for item in session.items) and vng_available() is None:
        _VM = BackgroundVm()
        _VM.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _VM is not None:
        _VM.stop()


@pytest.fixture(scope="session")
def vm_results() -> dict:
    reason = vng_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"kernel lab cannot run in CI: {reason}")
        pytest.skip(reason)
    assert _VM is not None, "the kernel VM was not started at collection"
    results = _VM.results()
    print(f"\nkernel lab: kernel {results.get('kernel')}, results in {_VM.results_dir}")
    for name, entry in results.get("scenarios", {}).items():
        print(f"  {name}: {entry.get('seconds')} s")
    return results
