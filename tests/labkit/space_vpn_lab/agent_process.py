"""Run the real agent as a child process inside the lab's customer namespace.

Writes its config and token file (0600), starts `python -m agent.daemon.main` with
`ip netns exec`, and reads its status over the control socket. Secrets go through
files only, never argv or the environment.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.control import protocol

log = logging.getLogger(__name__)


def write_secret_file(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


def heroku_agent_config(
    workdir: Path,
    *,
    api_url: str,
    vici_socket: str,
    space: str,
    vpn: str,
    local_address: str | None,
    mode: str = "auto",
    poll_interval: str = "2s",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config dict for one Heroku connection against the fake API."""
    conn: dict[str, Any] = {"space": space, "vpn": vpn, "mode": mode}
    if local_address:
        conn["local_address"] = local_address
    config: dict[str, Any] = {
        "api": {"url": api_url, "token_file": str(workdir / "heroku-token"), "poll_interval": poll_interval,
                "timeout": "2s"},
        "strongswan": {"vici_socket": vici_socket},
        "state_dir": str(workdir / "state"),
        "control_socket": str(workdir / "control.sock"),
        "metrics": {"listen": ""},
        "log_level": "info",
        "connections": [conn],
    }
    for key, value in (extra or {}).items():
        config[key] = value
    return config


class AgentProcess:
    """One agent daemon. `start()` may be called again after `kill()` or `stop()`."""

    def __init__(self, workdir: Path, netns: str, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.netns = netns
        self.config_path = workdir / "agent.yaml"
        self.log_path = workdir / "agent.log"
        self.control_socket = config["control_socket"]
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._proc: subprocess.Popen[bytes] | None = None

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()) -> None:
        """Launch the daemon; `env` adds variables (e.g. NOTIFY_SOCKET) to a clean
        environment; `wrapper` runs it inside the namespace, e.g. `setpriv` with the
        systemd unit's capabilities only."""
        argv = ["ip", "netns", "exec", self.netns, *wrapper, sys.executable, "-m", "agent.daemon.main",
                "--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if k not in ("HEROKU_API_KEY", "NOTIFY_SOCKET")} | (env or {})
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self._proc is not None
            self._proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the agent leaves tunnels up), then SIGKILL if it hangs."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        code = self._proc.returncode
        self._proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def status(self) -> dict[str, Any] | None:
        try:
            return protocol.request(self.control_socket, "status", timeout=2.0)
        except (protocol.AgentUnreachable, protocol.ProtocolError, OSError):
            return None

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, interval: float = 0.2) -> dict[str, Any]:
        """Poll status until predicate(status) holds; raise TimeoutError with the last status."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self._proc.returncode}; see {self.log_path}")
            last = self.status()
            if last is not None and predicate(last):
                return last
            time.sleep(interval)
        raise TimeoutError(f"agent did not reach the expected state in {timeout:g} s; last status: {last}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def tunnels_of(status: dict[str, Any], index: int = 0) -> dict[int, dict[str, Any]]:
    return {t["number"]: t for t in status["connections"][index]["tunnels"]}


def is_redundant(status: dict[str, Any], active: int = 1, index: int = 0) -> bool:
    """Active tunnel carries the CHILD_SA, the other has an IKE SA and no child (of the
    config's connection number `index`)."""
    tunnels = tunnels_of(status, index)
    if len(tunnels) != 2:
        return False
    standby = tunnels[3 - active]
    return (
        tunnels[active]["child_state"] == "INSTALLED"
        and tunnels[active]["role"] == "active"
        and standby["ike_state"] == "ESTABLISHED"
        and standby["child_state"] == "NONE"
    )
