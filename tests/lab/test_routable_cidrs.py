"""Several routable CIDRs against real charon daemons: IKEv2 carries them all in one
CHILD_SA (traffic from the second CIDR crosses the tunnel), and IKEv1 in policy mode,
which would negotiate only the first, is refused clearly: nothing loaded, status and
log name the fixes. IKEv1 with wide selectors in route mode runs in the kernel lab."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent.adapters.charon_messages import decode_text
from space_vpn_lab.agent_process import is_redundant
from space_vpn_lab.lab import Lab
from space_vpn_lab.space_side import conn_name
from space_vpn_lab.topology import (CUSTOMER_HOST_IP, ROUTABLE_CIDR, SECOND_CUSTOMER_HOST_IP, SECOND_ROUTABLE_CIDR,
                                    SPACE_CIDR)
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, customer_sas

pytestmark = pytest.mark.lab

CIDRS = [ROUTABLE_CIDR, SECOND_ROUTABLE_CIDR]


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path) -> Iterator[Lab]:
    """The conftest's lab, with both routable CIDRs (a customer host in each, both in the
    fake API's answer and accepted by the space side); parametrized with the IKE version."""
    with Lab(tmp_path / "lab", prefix=os.environ.get("SPACE_VPN_LAB_PREFIX", "svt"), ike_version=request.param,
             routable_cidrs=CIDRS) as built:
        yield built


def child_selectors(charon, conn_name: str) -> tuple[list[str], list[str]]:
    """(local-ts, remote-ts) of the tunnel's installed CHILD_SA, as that charon says."""
    with charon.connected() as session:
        events = list(session.list_sas())
    for event in events:
        for name, ike in event.items():
            for child in (ike.get("child-sas") or {}).values():
                if name == conn_name and decode_text(child["state"]) == "INSTALLED":
                    return ([decode_text(ts) for ts in child["local-ts"]],
                            [decode_text(ts) for ts in child["remote-ts"]])
    raise AssertionError(f"{conn_name} has no installed CHILD_SA")


def customer_conns(lab: Lab) -> list[str]:
    with lab.customer_charon.connected() as session:
        return [name for event in session.list_conns() for name in event]


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_ikev2_carries_every_routable_cidr_in_one_child(lab, make_agent, fake_api):
    assert fake_api.connection("acme-space", "office")["routable_cidrs"] == CIDRS
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    assert child_selectors(lab.customer_charon, T1) == (CIDRS, [SPACE_CIDR])
    assert child_selectors(lab.space_charon, conn_name(1)) == ([SPACE_CIDR], CIDRS)  # the space side agreed
    for source in (SECOND_CUSTOMER_HOST_IP, CUSTOMER_HOST_IP):
        result = lab.customer_ping(count=5, interval=0.2, source=source)
        assert result.received == result.transmitted == 5, f"from {source}: {result}"
    assert len(customer_sas(lab)[T1].ike_sas[0].children) == 1  # one CHILD_SA, not one per CIDR


@pytest.mark.parametrize("lab", [1], indirect=True)
def test_ikev1_with_two_cidrs_in_policy_mode_is_refused_with_the_fixes(lab, make_agent):
    agent = make_agent(mode="policy")
    agent.start()
    status = agent.wait_for(lambda s: s["ready"] and "first traffic selector" in s["connections"][0]["summary"], 30)
    conn = status["connections"][0]
    assert conn["health"] == "down"
    assert f"only {ROUTABLE_CIDR} would cross the tunnel, not {SECOND_ROUTABLE_CIDR}" in conn["summary"]
    assert "IKEv2" in conn["summary"] and "summarises" in conn["summary"]
    assert "in route mode (a kernel with XFRM interfaces), traffic_selectors: wide" in conn["summary"]
    # Nothing loaded with the first selector alone, nothing negotiated.
    assert customer_conns(lab) == [] and customer_sas(lab) == {}
    assert lab.customer_ping(count=2, interval=0.2).received == 0
    refusals = [line for line in agent.log_text().splitlines() if "first traffic selector" in line]
    assert len(refusals) == 1 and "ERROR" in refusals[0] and "not loaded into charon" in refusals[0]
    shown = subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, "status"],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 2 and "first traffic selector" in shown.stdout
