"""Token loading: order of sources, file mode refusal, and error messages that say where
the agent looked without ever showing the token."""

from __future__ import annotations

import os

import pytest

from agent.adapters.credentials import CredentialError, load_token
from agent.core.model import Secret

TOKEN = "HRKU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def write(path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_token_file_wins_over_env_and_credentials(tmp_path):
    f = write(tmp_path / "token", f"  {TOKEN}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "heroku-token", "from-systemd")
    token = load_token(f, {"HEROKU_API_KEY": "from-env"}, str(creds))
    assert token == Secret(TOKEN)


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_private_modes_are_accepted(tmp_path, mode):
    f = write(tmp_path / "token", TOKEN, mode)
    assert load_token(f, {}).reveal() == TOKEN


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_group_or_other_access_is_refused(tmp_path, mode):
    f = write(tmp_path / "token", TOKEN, mode)
    with pytest.raises(CredentialError) as info:
        load_token(f, {"HEROKU_API_KEY": "fallback-is-not-used"})
    message = str(info.value)
    assert f in message
    assert f"chmod 600 {f}" in message
    assert TOKEN not in message


def test_missing_token_file_is_an_error_not_a_fallback(tmp_path):
    f = str(tmp_path / "absent")
    with pytest.raises(CredentialError, match="does not exist") as info:
        load_token(f, {"HEROKU_API_KEY": "from-env"})
    assert f in str(info.value)


def test_empty_token_file_is_refused(tmp_path):
    f = write(tmp_path / "token", " \n")
    with pytest.raises(CredentialError, match="is empty"):
        load_token(f, {})


def test_directory_is_not_a_token_file(tmp_path):
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(CredentialError, match="not a regular file"):
        load_token(str(d), {})


def test_unopenable_token_file(tmp_path):
    # A path below a regular file cannot be opened even by root (ENOTDIR).
    parent = write(tmp_path / "not-a-dir", TOKEN)
    with pytest.raises(CredentialError, match="cannot open"):
        load_token(f"{parent}/token", {})


def test_env_is_used_and_stripped(tmp_path):
    assert load_token(None, {"HEROKU_API_KEY": f" {TOKEN}\n"}).reveal() == TOKEN


def test_blank_env_falls_through_to_credentials(tmp_path):
    write(tmp_path / "heroku-token", TOKEN + "\n", 0o400)
    env = {"HEROKU_API_KEY": "  ", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert load_token(None, env).reveal() == TOKEN


def test_credentials_directory_argument_overrides_env(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write(a / "heroku-token", "from-env-dir")
    write(b / "heroku-token", TOKEN)
    assert load_token(None, {"CREDENTIALS_DIRECTORY": str(a)}, str(b)).reveal() == TOKEN


def test_empty_systemd_credential_is_refused(tmp_path):
    write(tmp_path / "heroku-token", "")
    with pytest.raises(CredentialError, match="is empty"):
        load_token(None, {}, str(tmp_path))


def test_nothing_found_names_every_place(tmp_path):
    with pytest.raises(CredentialError) as info:
        load_token(None, {}, str(tmp_path))
    message = str(info.value)
    assert "api.token_file" in message
    assert "HEROKU_API_KEY" in message
    assert str(tmp_path / "heroku-token") in message


def test_nothing_found_without_credentials_directory():
    with pytest.raises(CredentialError, match="CREDENTIALS_DIRECTORY not set"):
        load_token(None, {})


def test_token_is_a_secret(tmp_path):
    token = load_token(None, {"HEROKU_API_KEY": TOKEN})
    assert TOKEN not in repr(token) and TOKEN not in str(token)
