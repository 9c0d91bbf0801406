"""The HA lab itself, with plain strongSwan on both gateways (the baseline): two gateway
namespaces under real keepalived (VRRPv3 over bridges, one sync group for the WAN VIP
and the LAN VIP, nopreempt), each with its own charon, a LAN host routing the space
through the LAN VIP, and the space side replacing the old node's SAs (`unique = replace`).

One lab for the whole module (the tests run in file order and each starts from
`lab.restore()`, which powers nodes on and lifts blocks as needed).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from space_vpn_lab.bench_timeline import TimedPinger, reply_gaps
from space_vpn_lab.ha_lab import HaLab
from space_vpn_lab.ha_report import gap_figures
from space_vpn_lab.ha_systems import PlainStrongswanPair, gateway_sas
from space_vpn_lab.ha_topology import LAN_HOST_IP, LAN_VIP, WAN_VIP
from space_vpn_lab.topology import SPACE_HOST_IP, list_netns
from tests.lab.helpers import assert_no_secret, require_keepalived

pytestmark = pytest.mark.lab

BOTH = {WAN_VIP, LAN_VIP}
#: VRRPv3 at 0.2 s: master down after 3 x 0.2 s + skew; measured ~0.55-0.7 s.
TAKEOVER_BOUND_S = 3.0
#: Plain strongSwan's backup gets through at its next IKE retransmission after the VIP
#: arrives; in file order that is its second or third (11.2 or 24.2 s after it started
#: trying), at worst the 75.6 s one.
PLAIN_TRAFFIC_BOUND_S = 90.0


@pytest.fixture(scope="module")
def ha_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaLab]:
    require_keepalived()
    workdir = tmp_path_factory.mktemp("ha-lab")
    prefix = os.environ.get("SPACE_VPN_LAB_PREFIX", "svt")
    with HaLab(workdir, PlainStrongswanPair, prefix=prefix) as lab:
        yield lab
    logs = lab.log_texts()  # charon and keepalived logs, complete once closed
    assert len(logs) == 5, sorted(logs)
    for text in logs.values():
        assert_no_secret(text, lab.every_psk)
    assert not any(ns.startswith(f"{prefix}-") for ns in list_netns())


@pytest.fixture
def lab(ha_lab: HaLab) -> HaLab:
    ha_lab.restore()
    return ha_lab


def wait_traffic(lab: HaLab, timeout: float) -> float:
    return lab.wait_for(lambda: lab.lan_ping(count=1, interval=0.2, deadline=1.0).received == 1, timeout,
                        "LAN -> space reply")


def child_packets(lab: HaLab, name: str) -> int:
    return sum(int(child.get("packets-out", b"0")) + int(child.get("packets-in", b"0"))
               for ike in gateway_sas(lab.gateways[name]) for child in (ike.get("child-sas") or {}).values())


def test_one_master_holds_both_vips(lab: HaLab):
    """gw1 came up first and holds the WAN VIP and the LAN VIP; gw2 holds neither and
    says BACKUP; the gateways forward."""
    assert lab.masters() == ["gw1"]
    assert lab.vips("gw1") == BOTH and lab.vips("gw2") == set()
    assert (lab.vrrp_state("gw1"), lab.vrrp_state("gw2")) == ("MASTER", "BACKUP")
    for name, gw in lab.gateways.items():
        forwarding = subprocess.run(["ip", "netns", "exec", gw.netns, "sysctl", "-n", "net.ipv4.ip_forward"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        assert forwarding == "1", name
        assert gw.keepalived.running and gw.charon.running


def test_lan_traffic_crosses_the_tunnel_through_the_master(lab: HaLab):
    """The LAN host's pings are forwarded by the master into its tunnel (its CHILD_SA
    counters grow); the backup's charon has nothing established (it keeps retrying
    from the VIP it does not hold); the space side has one IKE SA per tunnel."""
    master, backup = "gw1", "gw2"
    wait_traffic(lab, 30)
    before = child_packets(lab, master)
    result = lab.lan_ping(count=20, interval=0.02)
    assert result.received == 20
    assert child_packets(lab, master) >= before + 40  # 20 requests out, 20 replies in
    assert not [ike for ike in gateway_sas(lab.gateways[backup]) if ike.get("state") == b"ESTABLISHED"]
    sas = lab.space.sas()
    assert all(t.up and t.ike_sa_count == 1 for t in sas.values()), sas


def test_master_power_off_moves_the_vips_and_traffic_comes_back(lab: HaLab, tmp_path: Path):
    """The master loses both links and every process at once: the other node holds both
    VIPs within TAKEOVER_BOUND_S. Plain strongSwan gets traffic back only at the new
    master's next IKE retransmission (nothing tells its charon the VIP arrived); the
    space side then replaces the dead node's SAs with the new ones."""
    old = lab.masters()[0]
    new = lab.other(old)
    wait_traffic(lab, 30)
    pinger = TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 20_000, 0.01, tmp_path / "ping.out")
    with pinger:
        time.sleep(0.5)
        t0 = lab.power_off(old)
        took = lab.wait_for(lambda: lab.vips(new) == BOTH, TAKEOVER_BOUND_S, f"{new} holding both VIPs")
        lab.wait_for(lambda: sum(r > t0 for r in pinger.replies()) >= 5, PLAIN_TRAFFIC_BOUND_S,
                     "traffic through the new master")
        pinger.stop()
    figures = gap_figures(pinger.replies(), t0)
    print(f"\nplain pair, power-off of {old}: VIPs on {new} after {took * 1000:.0f} ms, "
          f"outage {figures['outage_ms']} ms")
    assert lab.vrrp_state(new) == "MASTER"
    assert lab.vips(old) == set() and not lab.gateways[old].powered
    sas = lab.space.sas()
    assert all(t.up and t.ike_sa_count == 1 for t in sas.values()), sas


def test_old_master_returns_and_nothing_moves(lab: HaLab, tmp_path: Path):
    """With nopreempt the returning node (even gw1, the higher priority) stays BACKUP:
    the VIPs stay where they are and not one ping is lost while it boots."""
    master = lab.masters()[0]
    returning = lab.other(master)
    lab.power_off(returning)
    wait_traffic(lab, PLAIN_TRAFFIC_BOUND_S)
    with TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 400, 0.01, tmp_path / "ping.out") as pinger:
        lab.power_on(returning)
        lab.wait_for(lambda: lab.vrrp_state(returning) == "BACKUP", 5, f"{returning} BACKUP")
        time.sleep(2.0)  # several advert intervals and charon's first retransmission
        result = pinger.stop()
    assert lab.masters() == [master] and lab.vips(returning) == set()
    # By sequence number: the echo in flight when the pinger is stopped is no loss.
    gaps = reply_gaps(pinger.output.read_text())
    assert result.received > 100 and gaps == [], (result, gaps)


def test_lan_link_down_moves_both_vips(lab: HaLab):
    """One node's LAN cable pulled: its LAN instance goes FAULT and the sync group takes
    the WAN instance with it, so the other node holds both VIPs (a WAN VIP without the
    LAN VIP would attract the space's traffic to a node the LAN cannot reach). Cable
    back: the node returns as BACKUP and nothing moves."""
    master = lab.masters()[0]
    other = lab.other(master)
    lab.set_lan_link(master, up=False)
    lab.wait_for(lambda: lab.vips(other) == BOTH and lab.vips(master) == set(), TAKEOVER_BOUND_S,
                 "both VIPs on the other node")
    assert lab.vrrp_state(master) == "FAULT"
    lab.set_lan_link(master, up=True)
    lab.wait_for(lambda: lab.vrrp_state(master) == "BACKUP", 5, f"{master} BACKUP again")
    time.sleep(1.0)
    assert lab.masters() == [other]


def test_split_brain_both_hold_the_vips(lab: HaLab, tmp_path: Path):
    """VRRP dropped on both nodes while WAN and LAN stay up: the backup hears no advert,
    becomes master too, and both hold both VIPs (duplicate addresses on both networks).
    Healed, the lower-priority master yields (two masters hearing each other: nopreempt
    does not apply) and one master remains.

    What traffic did meanwhile with plain strongSwan (a 30 s split, watched once): the
    newcomer's gratuitous ARPs pulled the LAN's and the space side's traffic to it, lost
    until its charon got through at its next IKE retransmission (~2 s there); then the
    space side replaced the old master's SAs (unique = replace) and traffic ran through
    the newcomer. The old master kept its replaced SAs as ESTABLISHED (the space's
    DELETE went to the VIP, i.e. to the newcomer) until DPD gave up after ~30 s and
    restarted them, competing for the far end. After the heal the node that yielded
    keeps its stale SAs, and the remaining master's traffic is back only once its own
    SAs are new again (DPD restart and a retransmission: seconds to a minute). Nothing
    in plain strongSwan ends the fight; only VRRP does. Figures depend on where each
    charon's DPD and retransmission timers stand, so this test asserts the VIPs only."""
    lab.split_brain(True)
    lab.wait_for(lambda: len(lab.masters()) == 2, TAKEOVER_BOUND_S, "two masters")
    with TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 300, 0.01, tmp_path / "ping.out") as pinger:
        time.sleep(2.0)
        result = pinger.stop()
    print(f"\nplain pair, split brain: {result.received}/{result.transmitted} replies in the first 2 s")
    assert all(lab.vips(name) == BOTH for name in lab.gateways)
    assert all(lab.vrrp_state(name) == "MASTER" for name in lab.gateways)
    lab.split_brain(False)
    lab.wait_for(lambda: len(lab.masters()) == 1, TAKEOVER_BOUND_S, "one master after the heal")
    assert lab.masters() == ["gw1"]  # priority 150 beats 100 once they hear each other
    lab.wait_for(lambda: lab.vrrp_state("gw2") == "BACKUP", 2, "gw2's notify: BACKUP")
