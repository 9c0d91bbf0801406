"""Host side of the kernel lab: boot Debian's kernel in a virtme-ng VM over the host's
root filesystem, run one Python module inside, and read back its results.json.

The VM gets no network; everything it does happens in namespaces it creates itself.
Only `results_dir` is shared (read-write, 9p); qemu is killed on timeout.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

KERNEL_GLOB = "/boot/vmlinuz-*"
KERNEL_PACKAGE = "linux-image-amd64"
RESULTS_FILE = "results.json"
CONSOLE_FILE = "console.log"
#: KVM fails on the lab hosts (MSR error): TCG emulation works and is fast enough.
VNG_OPTIONS = ("--user", "root", "--disable-kvm", "--cpus", "2", "--memory", "1G")
CONSOLE_TAIL_CHARS = 4000
KILL_GRACE_S = 5.0


class KernelVmError(Exception):
    """The VM did not produce results. `results` holds partial ones, if any."""

    def __init__(self, message: str, results: dict | None = None) -> None:
        super().__init__(message)
        self.results = results


def _version_key(path: str) -> list:
    # "6.1.0-56-amd64" sorts numerically part by part, not as text.
    version = path.rsplit("vmlinuz-", 1)[-1]
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"[.\-+]", version)]


def find_kernel() -> str:
    """The newest /boot/vmlinuz-*; raises KernelVmError when there is none."""
    kernels = [k for k in glob.glob(KERNEL_GLOB) if os.access(k, os.R_OK)]
    if not kernels:
        raise KernelVmError(f"no readable {KERNEL_GLOB}: install the Debian package "
                            f"{KERNEL_PACKAGE} (apt-get install -y {KERNEL_PACKAGE})")
    return max(kernels, key=_version_key)


def _venv_bin() -> str:
    # Not resolved: a venv's python is a symlink, and its path is what selects the venv.
    return os.path.dirname(sys.executable)


def _vng_path() -> str | None:
    return shutil.which("vng", path=os.pathsep.join([_venv_bin(), os.environ.get("PATH", "")]))


def vng_available() -> str | None:
    """None when a kernel VM can run here, else the reason why not."""
    if os.geteuid() != 0:
        return "the kernel lab needs root (namespaces and charon inside the VM)"
    if _vng_path() is None:
        return "vng not found: pip install virtme-ng into the venv"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found: apt-get install -y qemu-system-x86"
    if shutil.which("busybox") is None and not os.path.exists("/bin/busybox"):
        return "busybox not found: apt-get install -y busybox-static"
    try:
        find_kernel()
    except KernelVmError as e:
        return str(e)
    return None


def vm_argv(module: str, args: list[str], results_dir: Path, kernel: str) -> list[str]:
    """vng command line running `python -m module --results results_dir args...` inside."""
    inner = [sys.executable, "-m", module, "--results", str(results_dir), *args]
    return [_vng_path() or "vng", "--run", kernel, *VNG_OPTIONS,
            "--rwdir", str(results_dir), "--exec", shlex.join(inner)]


def run_in_vm(module: str, args: list[str], results_dir: Path, timeout: float,
              started: Callable[[subprocess.Popen], None] | None = None) -> dict:
    """Boot the VM, run the module, return its parsed results.json. Raises KernelVmError
    (with the console tail and any partial results) on timeout, crash or no results.
    `started` gets the VM's process (a caller in another thread may have to stop it)."""
    results_dir = Path(results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / RESULTS_FILE
    results_path.unlink(missing_ok=True)
    argv = vm_argv(module, args, results_dir, find_kernel())
    env = dict(os.environ, PATH=os.pathsep.join([_venv_bin(), os.environ.get("PATH", "")]))
    console = results_dir / CONSOLE_FILE
    began = time.monotonic()
    log.info("kernel VM: booting %s for %s", argv[2], module)
    with open(console, "wb") as out:
        # Own session: on timeout the whole group (vng, virtme-run, qemu) goes.
        proc = subprocess.Popen(argv, cwd=results_dir, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if started is not None:
            started(proc)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise KernelVmError(f"kernel VM timed out after {timeout:.0f} s\n{_tail(console)}",
                                _read_results(results_path)) from None
        finally:
            kill_group(proc)
    log.info("kernel VM: done in %.1f s (exit %s)", time.monotonic() - began, returncode)
    results = _read_results(results_path)
    if results is None or returncode != 0:
        raise KernelVmError(f"kernel VM exited with {returncode}, results "
                            f"{'present' if results else 'missing'}\n{_tail(console)}", results)
    return results


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL after a grace period; also reaps stragglers
    (qemu) when vng itself has already exited."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_S)
        deadline = time.monotonic() + KILL_GRACE_S
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_alive(proc.pid):
            return
    log.warning("kernel VM: process group %s still alive after SIGKILL", proc.pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_results(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, chars: int = CONSOLE_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return text[-chars:]
