"""Where the Platform API token comes from: api.token_file, else HEROKU_API_KEY, else the
systemd credential `heroku-token` ($CREDENTIALS_DIRECTORY, LoadCredential=).

The token is returned as a Secret and never appears in a message.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from agent.core.model import Secret

ENV_VAR = "HEROKU_API_KEY"
CREDENTIAL_NAME = "heroku-token"
_GROUP_OTHER_RW = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


class CredentialError(Exception):
    """No usable token: the message says where the agent looked and what to fix."""


def _check_file(path: str, st: os.stat_result, check_mode: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"token file {path} is not a regular file")
    if check_mode and st.st_mode & _GROUP_OTHER_RW:
        raise CredentialError(
            f"token file {path} is readable or writable by group/others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )


def _read(path: str, *, check_mode: bool) -> str:
    # Check the mode on the descriptor we read from, not on the name, so a swapped file
    # cannot slip past the check.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise CredentialError(f"token file {path} does not exist") from e
    except OSError as e:
        raise CredentialError(f"cannot open token file {path}: {e.strerror}") from e
    try:
        _check_file(path, os.fstat(fd), check_mode)
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialError(f"cannot read token file {path}: {e}") from e
    finally:
        os.close(fd)
    if not token:
        raise CredentialError(f"token file {path} is empty")
    return token


def load_token(
    token_file: str | None,
    environ: Mapping[str, str],
    credentials_directory: str | None = None,
) -> Secret:
    """The API token from the first configured source; CredentialError if none has one.

    `credentials_directory` overrides $CREDENTIALS_DIRECTORY from `environ`."""
    if token_file:
        # An explicit file is a promise: its problems are errors, not a reason to fall back.
        return Secret(_read(token_file, check_mode=True))
    env_token = environ.get(ENV_VAR, "").strip()
    if env_token:
        return Secret(env_token)
    cred_dir = credentials_directory or environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = os.path.join(cred_dir, CREDENTIAL_NAME)
        if os.path.exists(path):
            # systemd owns the mode of its credentials (0400 in a private directory).
            return Secret(_read(path, check_mode=False))
    looked = [
        "api.token_file (not set)",
        f"${ENV_VAR} (not set or empty)",
        f"{os.path.join(cred_dir, CREDENTIAL_NAME)} (missing)"
        if cred_dir
        else f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME} (CREDENTIALS_DIRECTORY not set)",
    ]
    raise CredentialError("no Platform API token found; looked at: " + ", ".join(looked))
