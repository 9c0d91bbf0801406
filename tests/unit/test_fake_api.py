"""The fake Platform API over real HTTP: documented headers and error bodies, ETag/304,
the rate-limit header, lookup by name or id, and each failure knob."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from space_vpn_lab.fake_api import ACCEPT, FakePlatformApi

TOKEN = "HRKU-fake-token-0123456789"
PSKS = ["fake.psk_one_AAAA", "fake.psk_two_BBBB"]


def add_office(fake: FakePlatformApi, space: str = "my-space", vpn: str = "office") -> dict:
    return fake.add_connection(
        space, vpn,
        public_ip="203.0.113.10",
        routable_cidrs=["172.16.0.0/16"],
        space_cidr_block="10.0.0.0/16",
        ike_version=1,
        tunnel_ips=["198.51.100.1", "198.51.100.2"],
        psks=PSKS,
    )


@pytest.fixture
def fake():
    with FakePlatformApi(TOKEN) as api:
        add_office(api)
        yield api


@pytest.fixture
def client(fake):
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=fake.url, headers=headers, timeout=5) as c:
        yield c


def test_url_is_loopback_with_a_real_port(fake):
    assert fake.url.startswith("http://127.0.0.1:")
    assert not fake.url.endswith(":0")


def test_info_returns_the_documented_body(fake, client):
    r = client.get("/spaces/my-space/vpn-connections/office")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"id", "name", "public_ip", "routable_cidrs", "space_cidr_block",
                         "ike_version", "status", "status_message", "tunnels"}
    assert body["name"] == "office" and body["status"] == "active"
    assert body["id"].isdigit() and len(body["id"]) == 12
    assert [t["pre_shared_key"] for t in body["tunnels"]] == PSKS
    assert set(body["tunnels"][0]) == {"ip", "customer_ip", "pre_shared_key", "status",
                                       "status_message", "last_status_change"}
    assert body == fake.connection("my-space", "office")


def test_lookup_by_id_and_list(fake, client):
    conn_id = fake.connection("my-space", "office")["id"]
    assert client.get(f"/spaces/my-space/vpn-connections/{conn_id}").json()["name"] == "office"
    listed = client.get("/spaces/my-space/vpn-connections")
    assert listed.status_code == 200
    assert [c["name"] for c in listed.json()] == ["office"]


def test_etag_then_304_then_change(fake, client):
    path = "/spaces/my-space/vpn-connections/office"
    first = client.get(path)
    etag = first.headers["ETag"]
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    fake.set_psk("my-space", "office", 2, "rotated")
    changed = client.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert changed.json()["tunnels"][1]["pre_shared_key"] == "rotated"


def test_rate_limit_remaining_decreases(client):
    values = [int(client.get("/spaces/my-space/vpn-connections/office")
                  .headers["RateLimit-Remaining"]) for _ in range(3)]
    assert values[0] < 4500
    assert values[0] > values[1] > values[2]


def test_set_rate_limit_without_refill_goes_down_to_429(fake, client):
    path = "/spaces/my-space/vpn-connections/office"
    fake.set_rate_limit(2, refill_per_minute=0)
    answers = [client.get(path) for _ in range(3)]
    assert [(r.status_code, r.headers["RateLimit-Remaining"]) for r in answers] == [
        (200, "1"), (200, "0"), (429, "0")]
    assert answers[2].json()["id"] == "rate_limit"
    assert fake.rate_limit_remaining == 0


def test_set_rate_limit_refills(fake, client):
    fake.set_rate_limit(100, refill_per_minute=60 * 1000)  # a token every millisecond
    time.sleep(0.05)
    remaining = int(client.get("/spaces/my-space/vpn-connections/office").headers["RateLimit-Remaining"])
    assert remaining > 100


def test_missing_accept_is_406(fake):
    r = httpx.get(fake.url + "/spaces/my-space/vpn-connections/office",
                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 406
    assert r.json()["id"] == "not_acceptable"
    assert set(r.json()) == {"id", "message", "url"}


@pytest.mark.parametrize("auth", [None, "Bearer wrong", TOKEN])
def test_bad_token_is_401(fake, auth):
    headers = {"Accept": ACCEPT} | ({"Authorization": auth} if auth else {})
    r = httpx.get(fake.url + "/spaces/my-space/vpn-connections/office", headers=headers)
    assert r.status_code == 401
    assert r.json()["id"] == "unauthorized"


def test_set_token_rotates(fake, client):
    fake.set_token("new-token")
    assert client.get("/spaces/my-space/vpn-connections/office").status_code == 401
    r = client.get("/spaces/my-space/vpn-connections/office",
                   headers={"Authorization": "Bearer new-token"})
    assert r.status_code == 200


@pytest.mark.parametrize("path, message", [
    ("/spaces/nope/vpn-connections/office", "space"),
    ("/spaces/my-space/vpn-connections/nope", "VPN connection"),
    ("/account", "resource"),
])
def test_not_found(client, path, message):
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["id"] == "not_found"
    assert message in r.json()["message"]


def test_remove_connection(fake, client):
    fake.remove_connection("my-space", "office")
    assert client.get("/spaces/my-space/vpn-connections/office").status_code == 404
    assert client.get("/spaces/my-space/vpn-connections").json() == []


def test_fail_next_counts_down_with_retry_after(fake, client):
    fake.fail_next(2, status=429, error_id="rate_limit", retry_after=7)
    path = "/spaces/my-space/vpn-connections/office"
    for _ in range(2):
        r = client.get(path)
        assert r.status_code == 429
        assert r.json()["id"] == "rate_limit"
        assert r.headers["Retry-After"] == "7"
    assert client.get(path).status_code == 200
    assert [s for _, _, s in fake.requests] == [429, 429, 200]


def test_fail_next_comes_before_auth(fake):
    fake.fail_next(1)
    assert httpx.get(fake.url + "/spaces/my-space/vpn-connections/office").status_code == 503


def test_fail_next_only_one_connection(fake, client):
    add_office(fake, vpn="branch")
    fake.fail_next(2, status=422, error_id="invalid_params", message="line one\nline two", only=("my-space", "office"))
    office, branch = "/spaces/my-space/vpn-connections/office", "/spaces/my-space/vpn-connections/branch"
    assert client.get(branch).status_code == 200  # answered, and not counted
    assert client.get("/spaces/my-space/vpn-connections").status_code == 200
    first = client.get(office)
    assert (first.status_code, first.json()["message"]) == (422, "line one\nline two")
    assert client.get(branch).status_code == 200
    assert client.get(office).status_code == 422
    assert client.get(office).status_code == 200
    assert [s for _, _, s in fake.requests] == [200, 200, 422, 200, 422, 200]


def test_tunnel_and_connection_knobs(fake, client):
    before = fake.connection("my-space", "office")["tunnels"][0]["last_status_change"]
    fake.set_tunnel_status("my-space", "office", 1, "DOWN", "maintenance")
    fake.set_tunnel_ip("my-space", "office", 2, "198.51.100.3")
    body = client.get("/spaces/my-space/vpn-connections/office").json()
    assert body["tunnels"][0]["status"] == "DOWN"
    assert body["tunnels"][0]["status_message"] == "maintenance"
    assert body["tunnels"][0]["last_status_change"] >= before
    assert body["tunnels"][1]["ip"] == "198.51.100.3"
    fake.set_connection_status("my-space", "office", "failed", "boom")
    body = client.get("/spaces/my-space/vpn-connections/office").json()
    assert (body["status"], body["status_message"], body["tunnels"]) == ("failed", "boom", [])
    with pytest.raises(ValueError):
        fake.set_psk("my-space", "office", 3, "x")


def test_life_cycle_knobs(fake, client):
    url = "/spaces/my-space/vpn-connections/office"
    first = client.get(url).json()
    fake.reorder_tunnels("my-space", "office")
    assert client.get(url).json()["tunnels"] == first["tunnels"][::-1]
    fake.set_routable_cidrs("my-space", "office", ["172.16.0.0/12"])
    assert client.get(url).json()["routable_cidrs"] == ["172.16.0.0/12"]
    fake.hide("my-space", "office")
    assert client.get(url).status_code == 404
    assert client.get("/spaces/my-space/vpn-connections").json() == []
    fake.hide("my-space", "office", False)
    fake.recreate("my-space", "office", psks=["n1", "n2"], tunnel_ips=["198.51.100.7", "198.51.100.8"])
    pending = client.get(url).json()
    assert (pending["status"], pending["tunnels"]) == ("pending", [])
    assert pending["id"] != first["id"]
    fake.set_connection_status("my-space", "office", "active")
    active = client.get(url).json()
    assert [(t["ip"], t["pre_shared_key"]) for t in active["tunnels"]] == [("198.51.100.7", "n1"), ("198.51.100.8", "n2")]


def test_delay_makes_clients_time_out(fake):
    fake.set_delay(0.5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(fake.url + "/spaces/my-space/vpn-connections/office", timeout=0.1)


def test_unreachable_drops_connections(fake, client):
    fake.set_unreachable(True)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/spaces/my-space/vpn-connections/office")
    fake.set_unreachable(False)
    assert client.get("/spaces/my-space/vpn-connections/office").status_code == 200
    assert [s for _, _, s in fake.requests] == [0, 200]


def test_other_methods_are_refused(client):
    assert client.post("/spaces/my-space/vpn-connections", json={}).status_code == 405


def test_requests_and_logs_never_hold_secrets(fake, client, caplog):
    with caplog.at_level(logging.DEBUG):
        client.get("/spaces/my-space/vpn-connections/office")
        client.get("/spaces/my-space/vpn-connections/office", headers={"Authorization": "Bearer x"})
    assert fake.requests == [("GET", "/spaces/my-space/vpn-connections/office", 200),
                             ("GET", "/spaces/my-space/vpn-connections/office", 401)]
    text = repr(fake.requests) + caplog.text + repr(fake)
    for secret in [TOKEN, *PSKS]:
        assert secret not in text


def test_concurrent_clients(fake):
    results = []

    def get():
        r = httpx.get(fake.url + "/spaces/my-space/vpn-connections/office",
                      headers={"Accept": ACCEPT, "Authorization": f"Bearer {TOKEN}"})
        results.append(r.status_code)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    assert len(fake.requests) == 8


def test_stop_is_prompt_even_with_a_slow_request_pending(fake):
    fake.set_delay(30)
    t = threading.Thread(target=lambda: pytest.raises(
        httpx.HTTPError, httpx.get, fake.url + "/spaces/x/vpn-connections/y", timeout=10))
    t.start()
    fake.stop()
    t.join(timeout=5)
    assert not t.is_alive()


def test_url_before_start_is_an_error():
    with pytest.raises(RuntimeError):
        _ = FakePlatformApi(TOKEN).url


def test_request_times_are_kept_in_step_with_requests(fake, client):
    before = time.monotonic()
    for _ in range(2):
        client.get("/spaces/my-space/vpn-connections/office")
    times = fake.request_times
    assert len(times) == len(fake.requests) == 2
    assert before <= times[0] <= times[1] <= time.monotonic()
