"""Fixtures for lab tests: a fresh lab (two namespaces, two real charons), the fake
Platform API inside the customer namespace, and the agent as a real process."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from space_vpn_lab import topology
from space_vpn_lab.agent_process import AgentProcess, heroku_agent_config, write_secret_file
from space_vpn_lab.fake_api import SPACE, VPN, FakePlatformApi, start_fake_api
from space_vpn_lab.lab import Lab
from tests.lab.helpers import assert_no_secret


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """A fresh lab; parametrize indirectly with the IKE version (default 1)."""
    # Own prefix: a test run never tears down a demo's lab, and vice versa.
    # SPACE_VPN_LAB_PREFIX lets two checkouts run their lab tests side by side.
    with Lab(tmp_path / "lab", prefix=os.environ.get("SPACE_VPN_LAB_PREFIX", "svt"), ike_version=getattr(request, "param", 1)) as built:
        yield built


@pytest.fixture
def token() -> str:
    return "HRKU-" + secrets.token_hex(16)


@pytest.fixture
def fake_api(lab: Lab, token: str) -> Iterator[FakePlatformApi]:
    with start_fake_api(lab, token) as api:
        yield api


@pytest.fixture
def make_agent(tmp_path: Path, lab: Lab, fake_api: FakePlatformApi, token: str) -> Iterator[Callable[..., AgentProcess]]:
    """Build (not start) an agent for the lab's Heroku connection."""
    agents: list[AgentProcess] = []

    def make(**overrides) -> AgentProcess:
        workdir = tmp_path / f"agent{len(agents)}"
        workdir.mkdir()
        write_secret_file(workdir / "heroku-token", token)
        config = heroku_agent_config(
            workdir, api_url=fake_api.url, vici_socket=lab.customer_charon.vici_socket,
            space=SPACE, vpn=VPN, local_address=topology.CUSTOMER_PUBLIC_IP, **overrides,
        )
        agent = AgentProcess(workdir, lab.topology.cust_ns, config)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()
    # Every lab scenario's agent log, whatever the test asserted: no PSK (of any of the
    # lab's VPNs), no token.
    for agent in agents:
        assert_no_secret(agent.log_text(), (*lab.every_psk, token))


@pytest.fixture
def secrets_of(lab: Lab, token: str) -> tuple[str, ...]:
    """Everything that must never appear in any output."""
    return (*lab.every_psk, token)
