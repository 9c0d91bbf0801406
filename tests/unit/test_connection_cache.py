"""The on-disk cache of the last good API answer: private modes, atomic replacement,
safe file names, and a corrupt file that is ignored with a warning."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from agent.adapters.connection_cache import ConnectionCache
from tests.unit.test_payload import PSK1, PSK2, good


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_round_trip(tmp_path):
    cache = ConnectionCache(tmp_path)
    cache.save("my-space", "office", good())
    conn = cache.load("my-space", "office")
    assert conn is not None
    assert conn.name == "office"
    assert conn.tunnel(2).psk.reveal() == PSK2


def test_absent_is_none(tmp_path):
    assert ConnectionCache(tmp_path).load("s", "v") is None
    assert ConnectionCache(tmp_path / "not-yet").load("s", "v") is None


def test_file_is_0600_and_new_dir_0700(tmp_path):
    old = os.umask(0)  # even a careless umask must not widen the modes
    try:
        state = tmp_path / "state" / "nested"
        cache = ConnectionCache(state)
        cache.save("s", "v", good())
    finally:
        os.umask(old)
    assert mode(cache.path("s", "v")) == 0o600
    assert mode(state) == 0o700


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    cache = ConnectionCache(tmp_path)
    cache.save("s", "v", good())
    first_inode = os.stat(cache.path("s", "v")).st_ino
    newer = good()
    newer["tunnels"][0]["pre_shared_key"] = "rotated.key"
    cache.save("s", "v", newer)
    assert os.stat(cache.path("s", "v")).st_ino != first_inode  # a new file renamed over
    assert cache.load("s", "v").tunnel(1).psk.reveal() == "rotated.key"
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path("s", "v").name]


def test_failed_write_keeps_the_old_file(tmp_path):
    cache = ConnectionCache(tmp_path)
    cache.save("s", "v", good())
    with pytest.raises(TypeError):
        cache.save("s", "v", {"not": object()})
    assert cache.load("s", "v") is not None
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("space, vpn", [("../../etc", "passwd"), ("a/b", ".."), (".", "x@y")])
def test_names_cannot_escape_the_state_dir(tmp_path, space, vpn):
    cache = ConnectionCache(tmp_path / "state")
    path = cache.path(space, vpn)
    assert path.parent == tmp_path / "state"
    cache.save(space, vpn, good())
    assert cache.load(space, vpn) is not None


def test_distinct_pairs_get_distinct_files(tmp_path):
    cache = ConnectionCache(tmp_path)
    assert cache.path("a@b", "c") != cache.path("a", "b@c")


def test_empty_name_is_refused(tmp_path):
    with pytest.raises(ValueError):
        ConnectionCache(tmp_path).path("", "v")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[]"])
def test_corrupt_cache_warns_and_returns_none(tmp_path, caplog, content):
    cache = ConnectionCache(tmp_path)
    cache.save("s", "v", good())
    cache.path("s", "v").write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert cache.load("s", "v") is None
    assert any("s/v" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_invalid_cache_warns_without_psks(tmp_path, caplog):
    cache = ConnectionCache(tmp_path)
    data = good()
    data["ike_version"] = 9
    cache.save("s", "v", data)
    with caplog.at_level(logging.DEBUG):
        assert cache.load("s", "v") is None
    assert "ike_version" in caplog.text
    assert PSK1 not in caplog.text and PSK2 not in caplog.text


def test_saved_json_is_the_raw_body(tmp_path):
    cache = ConnectionCache(tmp_path)
    cache.save("s", "v", good())
    assert json.loads(cache.path("s", "v").read_text()) == good()


def test_discard_forgets_a_deleted_connection(tmp_path):
    cache = ConnectionCache(tmp_path / "state")
    cache.save("acme", "office", good())
    assert cache.load("acme", "office") is not None
    cache.discard("acme", "office")
    assert cache.load("acme", "office") is None
    cache.discard("acme", "office")  # nothing there: no error
