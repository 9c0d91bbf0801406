"""Token loading: order of sources, file mode refusal, and error messages that say where
the agent looked without ever showing the token."""

from __future__ import annotations

import os
import time

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


# --- the file itself: one open, every check on the descriptor ---------------------------------

def refused(path: str) -> str:
    with pytest.raises(CredentialError) as info:
        load_token(path, {"HEROKU_API_KEY": "fallback-is-not-used"})
    message = str(info.value)
    assert path in message and TOKEN not in message
    return message


def test_a_fifo_is_refused_at_once_instead_of_hanging(tmp_path):
    fifo = tmp_path / "token"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    message = refused(str(fifo))
    assert time.monotonic() - started < 1  # a blocking open would wait for a writer for ever
    assert message == f"token file {fifo} is not a regular file (a FIFO); it must be a plain file holding only the secret"


def test_a_symlink_is_refused_even_to_a_good_file(tmp_path):
    real = write(tmp_path / "real-token", TOKEN)
    link = tmp_path / "token"
    link.symlink_to(real)
    assert refused(str(link)) == f"token file {link} is a symbolic link; name the file itself (e.g. {real})"


def test_a_dangling_symlink_is_refused_as_a_link(tmp_path):
    link = tmp_path / "token"
    link.symlink_to(tmp_path / "nowhere")
    assert "is a symbolic link" in refused(str(link))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_file_of_another_user_is_refused(tmp_path):
    f = write(tmp_path / "token", TOKEN)
    os.chown(f, 4321, -1)
    assert refused(f) == f"token file {f} is owned by uid 4321, not by root; run: chown root {f}"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_file_of_another_group_is_fine_while_the_mode_is_private(tmp_path):
    f = write(tmp_path / "token", TOKEN)
    os.chown(f, 0, 4321)
    assert load_token(f, {}).reveal() == TOKEN


def test_group_readable_says_chmod(tmp_path):
    f = write(tmp_path / "token", TOKEN, 0o640)
    assert refused(f) == (f"token file {f} is readable or writable by group/others (mode 0640); "
                          f"run: chmod 600 {f}")


def test_a_directory_says_what_it_is(tmp_path):
    d = tmp_path / "token"
    d.mkdir(mode=0o700)
    assert "is not a regular file (a directory)" in refused(str(d))


def test_a_big_file_is_refused_without_reading_it(tmp_path):
    f = write(tmp_path / "token", TOKEN + "x" * 5000)
    assert refused(f) == f"token file {f} holds {len(TOKEN) + 5000} bytes, more than 4096; it must hold only the secret"


def test_a_device_is_not_read(tmp_path):
    # /dev/zero would never end: the checks come before any read.
    assert "is not a regular file (a character device)" in refused("/dev/zero")


def test_empty_file_message_is_plain(tmp_path):
    f = write(tmp_path / "token", "")
    assert refused(f) == f"token file {f} is empty"


def test_binary_content_is_not_quoted(tmp_path):
    f = tmp_path / "token"
    f.write_bytes(b"\xff\xfe" + TOKEN.encode())
    os.chmod(f, 0o600)
    assert refused(str(f)) == f"token file {f} is not UTF-8 text"


def test_the_descriptor_is_closed_whatever_happens(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    good = write(tmp_path / "good", TOKEN)
    before = len(os.listdir("/proc/self/fd"))
    for path in (str(fifo), good, write(tmp_path / "open", TOKEN, 0o644)):
        try:
            load_token(path, {})
        except CredentialError:
            pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_open_follows_no_link_and_never_blocks(tmp_path, monkeypatch):
    """The flags of the one open, and fstat (not stat) for every check: no window between a
    check and the read."""
    f = write(tmp_path / "token", TOKEN)
    seen = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a: seen.append(flags) or real_open(path, flags, *a))
    monkeypatch.setattr(os, "stat", lambda *a, **k: pytest.fail("checked by name, not on the descriptor"))
    monkeypatch.setattr(os, "lstat", lambda *a, **k: pytest.fail("checked by name, not on the descriptor"))
    assert load_token(f, {}).reveal() == TOKEN
    wanted = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    assert len(seen) == 1 and seen[0] & wanted == wanted


def test_systemd_credential_skips_owner_and_mode_but_not_the_file_checks(tmp_path):
    # systemd owns the mode of its credential directory; a FIFO is still no token.
    os.mkfifo(tmp_path / "heroku-token", 0o644)
    with pytest.raises(CredentialError, match="a FIFO"):
        load_token(None, {}, str(tmp_path))
