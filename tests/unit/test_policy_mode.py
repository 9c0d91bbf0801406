"""Policy mode's and charon objects' decisions over desired and observed state: which charon objects to
load or unload, which tunnel carries traffic, and which SAs to bring up or close.
Every case is a table row: inputs built from frozen dataclasses, exact actions out."""

from __future__ import annotations

import pytest

from agent.core.charon_objects import (
    InitiateChild,
    InitiateIke,
    LoadTunnel,
    TerminateChild,
    TerminateIke,
    UnloadConn,
    UnloadShared,
    plan_objects,
    same_ike,
    tunnel_fingerprint,
)
from agent.core.desired import DesiredConnection, desired_connection
from agent.core.model import (
    ConnectionStatus,
    Secret,
    Tunnel,
    TunnelApiStatus,
    VpnConnection,
)
from agent.core.modes import Mode
from agent.core.observation import CONNECTING, ESTABLISHED, INSTALLED, CharonState, ChildSa, IkeSa, TunnelSas
from agent.core.policy_mode import CHILDLESS_ATTEMPTS, adopt_active, plan_policy_mode
from agent.core.recovery import plan_stuck
from agent.core.tunnel_timing import TunnelTiming, backoff_delay, observe_timing, reached_desired_state

LOCAL = "198.51.100.10"
T1_IP = "203.0.113.11"
T2_IP = "203.0.113.12"
PSK1 = "alpha-Psk-one-Qx"
PSK2 = "bravo-Psk-two-Zk"
KEY = "acme-office"
T1 = "svpn-acme-office-t1"
T2 = "svpn-acme-office-t2"
NOW = 1000.0


def make_conn(*, psk1: str = PSK1, t2_ip: str = T2_IP, ike_version: int = 1, key: str = KEY,
              routable_cidrs: tuple[str, ...] = ("172.16.0.0/16",)) -> DesiredConnection:
    vpn = VpnConnection(
        id="vpn-1",
        name="office",
        public_ip=LOCAL,
        routable_cidrs=routable_cidrs,
        space_cidr_block="10.0.0.0/16",
        ike_version=ike_version,
        status=ConnectionStatus.ACTIVE,
        tunnels=(
            Tunnel(1, T1_IP, Secret(psk1), TunnelApiStatus.UP),
            Tunnel(2, t2_ip, Secret(PSK2), TunnelApiStatus.UP),
        ),
    )
    return desired_connection(
        key=key, space="acme-space", vpn="office", local_address=LOCAL, local_id=None,
        mode=Mode.POLICY, connection=vpn,
    )


CONN = make_conn()
FP1 = tunnel_fingerprint(CONN, 1)
FP2 = tunnel_fingerprint(CONN, 2)


def child(uniqueid: str, state: str = INSTALLED, name: str = T1) -> ChildSa:
    return ChildSa(name=name, uniqueid=uniqueid, state=state)


def ike(name: str, uniqueid: str, state: str = ESTABLISHED, *children: ChildSa) -> IkeSa:
    return IkeSa(name=name, uniqueid=uniqueid, state=state, children=tuple(children))


def observed(*ike_sas: IkeSa, conns=(T1, T2), shared=(T1, T2)) -> CharonState:
    sas: dict[str, list[IkeSa]] = {}
    for sa in ike_sas:
        sas.setdefault(sa.name, []).append(sa)
    return CharonState(
        reachable=True,
        version="5.9.8",
        conns=frozenset(conns),
        shared_ids=frozenset(shared),
        sas={name: TunnelSas(tuple(group)) for name, group in sas.items()},
    )


# -- tunnel_fingerprint ---------------------------------------------------------------

def test_fingerprint_is_stable_for_the_same_input_and_differs_per_tunnel():
    assert tunnel_fingerprint(make_conn(), 1) == FP1
    assert FP1 != FP2
    ike, child = FP1.split(":")
    assert len(ike) == len(child) == 16 and int(ike, 16) >= 0 and int(child, 16) >= 0


def test_fingerprint_keeps_its_ike_half_when_only_the_selectors_change():
    wider = make_conn(routable_cidrs=("172.16.0.0/16", "172.17.0.0/16"), ike_version=2)
    assert same_ike(tunnel_fingerprint(make_conn(ike_version=2), 1), tunnel_fingerprint(wider, 1))
    assert tunnel_fingerprint(make_conn(ike_version=2), 1) != tunnel_fingerprint(wider, 1)
    wider = make_conn(routable_cidrs=("172.16.0.0/12",))
    assert tunnel_fingerprint(wider, 1) != FP1
    assert same_ike(tunnel_fingerprint(wider, 1), FP1)
    assert not same_ike(tunnel_fingerprint(make_conn(psk1="charlie-Psk-new-Rt"), 1), FP1)


@pytest.mark.parametrize(
    "changed, number",
    [
        (make_conn(psk1="charlie-Psk-new-Rt"), 1),
        (make_conn(t2_ip="203.0.113.99"), 2),
        (make_conn(ike_version=2), 1),
    ],
    ids=["psk-rotation", "new-tunnel-ip", "ike-version"],
)
def test_fingerprint_changes_with_what_goes_into_charon(changed, number):
    assert tunnel_fingerprint(changed, number) != tunnel_fingerprint(CONN, number)


def test_fingerprint_never_contains_the_psk():
    for number, psk in ((1, PSK1), (2, PSK2)):
        fingerprint = tunnel_fingerprint(CONN, number)
        assert psk not in fingerprint
        assert psk.encode().hex() not in fingerprint


# -- plan_objects ---------------------------------------------------------------------

OLD_T1 = "svpn-old-site-t1"

PLAN_OBJECTS_CASES = [
    pytest.param(
        [CONN], {KEY}, {}, observed(conns=(), shared=()),
        [LoadTunnel(CONN, 1, FP1), LoadTunnel(CONN, 2, FP2)],
        id="load-when-missing",
    ),
    pytest.param(
        [CONN], {KEY}, {T1: FP1, T2: FP2},
        observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T2, "8")),
        [],
        id="nothing-when-loaded-with-equal-fingerprint",
    ),
    pytest.param(
        [CONN], {KEY}, {T1: "0000000000000000", T2: FP2},
        observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T1, "9", CONNECTING), ike(T2, "8")),
        [LoadTunnel(CONN, 1, FP1), TerminateIke(T1, "7"), TerminateIke(T1, "9")],
        id="reload-and-terminate-every-sa-when-fingerprint-changed",
    ),
    pytest.param(
        [CONN], {KEY}, {},
        observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T2, "8")),
        [LoadTunnel(CONN, 1, FP1), LoadTunnel(CONN, 2, FP2)],
        id="adoption-after-restart-loads-without-terminate",
    ),
    pytest.param(
        [CONN], {KEY}, {T1: FP1, T2: FP2}, observed(conns=(), shared=()),
        [LoadTunnel(CONN, 1, FP1), LoadTunnel(CONN, 2, FP2)],
        id="charon-restarted-reloads-without-terminate",
    ),
    pytest.param(
        [CONN], {KEY}, {T1: FP1, T2: FP2},
        observed(
            ike(OLD_T1, "3", ESTABLISHED, child("4", name=OLD_T1)),
            ike("office-legacy", "5", ESTABLISHED, child("6", name="office-legacy")),
            conns=(T1, T2, OLD_T1, "office-legacy", "svpnx-lookalike"),
            shared=(T1, T2, OLD_T1, "office-legacy-psk"),
        ),
        [UnloadConn(OLD_T1), TerminateIke(OLD_T1, "3"), UnloadShared(OLD_T1)],
        id="unload-only-our-unconfigured-objects-never-foreign",
    ),
    pytest.param(
        [], {KEY}, {T1: FP1, T2: FP2},
        observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T2, "8")),
        [],
        id="configured-key-without-desired-state-left-alone",
    ),
    pytest.param(
        [], set(), {T1: FP1, T2: FP2},
        observed(ike(T1, "7", ESTABLISHED, child("12"))),
        [UnloadConn(T1), TerminateIke(T1, "7"), UnloadConn(T2), UnloadShared(T1), UnloadShared(T2)],
        id="key-removed-from-config-unloads-both-tunnels",
    ),
]


@pytest.mark.parametrize("desired, configured, loaded, charon, expected", PLAN_OBJECTS_CASES)
def test_plan_objects(desired, configured, loaded, charon, expected):
    assert plan_objects(desired, configured, loaded, charon) == expected


# -- adopt_active ---------------------------------------------------------------------

ADOPT_CASES = [
    pytest.param(observed(), None, 1, id="cold-start-defaults-to-1"),
    pytest.param(observed(), 2, 2, id="cold-start-takes-the-preferred"),
    pytest.param(observed(ike(T1, "7"), ike(T2, "8", ESTABLISHED, child("20", name=T2))), None, 2,
                 id="adopt-tunnel-2-carrying-the-child"),
    pytest.param(observed(ike(T1, "7"), ike(T2, "8", ESTABLISHED, child("20", name=T2))), 1, 2,
                 id="adopt-beats-preference"),
    pytest.param(observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T2, "8", ESTABLISHED, child("20", name=T2))),
                 None, 1, id="both-carry-first-wins"),
    pytest.param(observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T2, "8", ESTABLISHED, child("20", name=T2))),
                 2, 2, id="both-carry-preferred-wins"),
    pytest.param(observed(ike(T1, "7", ESTABLISHED, child("12", "REKEYING")), ike(T2, "8")), None, 1,
                 id="adopt-ignores-non-installed-child"),
]


@pytest.mark.parametrize("charon, preferred, expected", ADOPT_CASES)
def test_adopt_active(charon, preferred, expected):
    assert adopt_active(CONN, charon, preferred) == expected


# -- plan_policy_mode -----------------------------------------------------------------

def gated(*names: str) -> dict[str, TunnelTiming]:
    return {name: TunnelTiming(attempts=3, next_attempt_at=NOW + 4.0) for name in names}


POLICY_CASES = [
    pytest.param(observed(), 1, {}, [InitiateChild(T1), InitiateIke(T2)], id="cold-start"),
    pytest.param(observed(), 2, {}, [InitiateChild(T2), InitiateIke(T1)], id="cold-start-active-2"),
    pytest.param(observed(ike(T1, "7", CONNECTING), ike(T2, "8", CONNECTING)), 1, {}, [],
                 id="connecting-waits"),
    pytest.param(observed(ike(T1, "7"), ike(T2, "8")), 1, {}, [InitiateChild(T1)],
                 id="active-ike-without-child-gets-child"),
    pytest.param(observed(), 1, gated(T1), [InitiateIke(T2)], id="backoff-gates-active"),
    pytest.param(observed(), 1, gated(T1, T2), [], id="backoff-gates-both"),
    pytest.param(observed(), 1, {T1: TunnelTiming(attempts=3, next_attempt_at=NOW)},
                 [InitiateChild(T1), InitiateIke(T2)], id="backoff-expired-at-next-attempt"),
    pytest.param(observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T2, "8", ESTABLISHED, child("21", name=T2))),
                 1, {}, [TerminateChild(T2, "21")], id="standby-child-closed-once-active-installed"),
    pytest.param(observed(ike(T1, "7"), ike(T2, "8", ESTABLISHED, child("21", name=T2))),
                 1, {}, [InitiateChild(T1)], id="standby-child-kept-until-active-installed"),
    pytest.param(observed(ike(T1, "7", ESTABLISHED, child("12", "REKEYING")),
                          ike(T2, "8", ESTABLISHED, child("21", name=T2))),
                 1, {}, [], id="standby-child-kept-while-active-only-rekeying"),
    pytest.param(observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T2, "8")), 1, {}, [],
                 id="steady-state-no-actions"),
    pytest.param(observed(ike(T1, "7"), ike(T2, "8", ESTABLISHED, child("20", name=T2))), 2, {}, [],
                 id="adopted-tunnel-2-carries-nothing-torn-down"),
    pytest.param(observed(ike(T1, "7", ESTABLISHED, child("12")), ike(T1, "9", CONNECTING), ike(T2, "8")), 1, {}, [],
                 id="ikev1-reauth-overlap-no-actions"),
]


@pytest.mark.parametrize("charon, active, timing, expected", POLICY_CASES)
def test_plan_policy_mode(charon, active, timing, expected):
    assert plan_policy_mode(CONN, charon, active, timing, NOW) == expected


def test_adopted_state_after_restart_tears_nothing_down():
    charon = observed(ike(T1, "7"), ike(T2, "8", ESTABLISHED, child("20", name=T2)))
    active = adopt_active(CONN, charon, None)
    actions = plan_objects([CONN], {KEY}, {}, charon) + plan_policy_mode(CONN, charon, active, {}, NOW)
    assert active == 2
    assert actions == [LoadTunnel(CONN, 1, FP1), LoadTunnel(CONN, 2, FP2)]


# -- reached_desired_state ------------------------------------------------------------

@pytest.mark.parametrize(
    "sas, wants_child, expected",
    [
        (TunnelSas((ike(T1, "7", ESTABLISHED, child("12")),)), True, True),
        (TunnelSas((ike(T1, "7"),)), True, False),
        (TunnelSas((ike(T1, "7", ESTABLISHED, child("12", "REKEYING")),)), True, False),
        (TunnelSas(), True, False),
        (TunnelSas((ike(T2, "8"),)), False, True),
        (TunnelSas((ike(T2, "8", CONNECTING),)), False, False),
        (TunnelSas(), False, False),
    ],
    ids=["active-installed", "active-ike-only", "active-rekeying", "active-nothing",
         "standby-established", "standby-connecting", "standby-nothing"],
)
def test_reached_desired_state(sas, wants_child, expected):
    assert reached_desired_state(sas, wants_child) is expected


# -- backoff_delay --------------------------------------------------------------------

@pytest.mark.parametrize(
    "attempts, expected",
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0), (20, 5.0)],
)
def test_backoff_grows_exponentially_up_to_the_cap(attempts, expected):
    assert backoff_delay(attempts, 0.5) == pytest.approx(expected)  # jitter 0.5 = factor 1.0


@pytest.mark.parametrize("attempts", [1, 3, 6, 50])
def test_backoff_jitter_stays_within_20_percent(attempts):
    nominal = backoff_delay(attempts, 0.5)
    assert backoff_delay(attempts, 0.0) == pytest.approx(0.8 * nominal)
    assert 0.8 * nominal <= backoff_delay(attempts, 0.999999) < 1.2 * nominal


def test_backoff_honours_custom_base_and_cap():
    assert backoff_delay(3, 0.5, base=0.5, cap=10.0) == pytest.approx(2.0)
    assert backoff_delay(9, 0.5, base=0.5, cap=10.0) == pytest.approx(10.0)


@pytest.mark.parametrize("attempts", [1025, 5000])
def test_backoff_stays_capped_after_hours_of_failed_attempts(attempts):
    # attempts only reset once a tunnel reaches its desired state; at ~5 s per
    # attempt a peer down for a couple of hours passes 1024 attempts.
    assert backoff_delay(attempts, 0.5) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("ike_version", "attempts", "expected"),
    [
        (2, 0, [InitiateChild(T1), InitiateIke(T2)]),  # IKEv2 standby: childless first
        (2, CHILDLESS_ATTEMPTS - 1, [InitiateChild(T1), InitiateIke(T2)]),
        (2, CHILDLESS_ATTEMPTS, [InitiateChild(T1), InitiateChild(T2)]),  # peer refuses childless
        (1, CHILDLESS_ATTEMPTS + 5, [InitiateChild(T1), InitiateIke(T2)]),  # IKEv1 never needs it
    ],
)
def test_ikev2_standby_falls_back_to_a_regular_ike_sa_after_failed_childless_tries(ike_version, attempts, expected):
    timing = {T2: TunnelTiming(attempts=attempts, next_attempt_at=0.0)}
    conn = make_conn(ike_version=ike_version)
    assert plan_policy_mode(conn, observed(), 1, timing, NOW) == expected


# -- plan_stuck ------------------------------------------------------------------------

def quick_mode(uniqueid: str, *children: ChildSa) -> IkeSa:
    """An established IKE SA with a Quick Mode in flight."""
    return IkeSa(name=T1, uniqueid=uniqueid, state=ESTABLISHED, children=tuple(children), tasks_active=("QUICK_MODE",))


def timed(charon: CharonState, *, at: float, timing: TunnelTiming | None = None) -> TunnelTiming:
    return observe_timing(timing or TunnelTiming(), charon.tunnel(T1), at)


@pytest.mark.parametrize(("sa", "stuck"), [
    (quick_mode("7"), True),  # Quick Mode for the first CHILD_SA, never answered
    (IkeSa(name=T1, uniqueid="7", state=ESTABLISHED, tasks_active=("CHILD_CREATE",)), True),  # IKEv2
    (quick_mode("7", child("9")), False),  # a rekey in flight: the installed child carries on, charon's business
    (ike(T1, "7"), False),  # an idle standby
    (ike(T1, "7", CONNECTING), True),  # Main Mode never answered
])
def test_what_negotiates_for_connect_timeout_is_dropped(sa, stuck):
    charon = observed(sa)
    first = timed(charon, at=NOW)
    assert plan_stuck(CONN, charon, {T1: timed(charon, at=NOW + 4.9, timing=first)}, NOW + 4.9, 5.0) == []
    later = timed(charon, at=NOW + 5, timing=first)
    assert plan_stuck(CONN, charon, {T1: later}, NOW + 5, 5.0) == ([TerminateIke(T1, "7")] if stuck else [])


def test_the_negotiation_clock_restarts_once_a_child_is_installed():
    waiting = timed(observed(quick_mode("7")), at=NOW)
    assert waiting.child_negotiating_since == NOW
    done = timed(observed(ike(T1, "7", ESTABLISHED, child("9"))), at=NOW + 1, timing=waiting)
    assert done.child_negotiating_since is None
    again = timed(observed(quick_mode("7")), at=NOW + 2, timing=done)
    assert again.child_negotiating_since == NOW + 2
