"""Where the Platform API token comes from: api.token_file, else HEROKU_API_KEY, else the
systemd credential `heroku-token` ($CREDENTIALS_DIRECTORY, LoadCredential=).

The token is returned as a Secret and never appears in a message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent.adapters.secret_files import SecretFileError, read_secret_file
from agent.core.model import Secret

ENV_VAR = "HEROKU_API_KEY"
CREDENTIAL_NAME = "heroku-token"


class CredentialError(Exception):
    """No usable token: the message says where the agent looked and what to fix."""


def _read(path: str, *, check_mode: bool) -> str:
    try:
        return read_secret_file(path, "token file", private=check_mode)
    except SecretFileError as e:
        raise CredentialError(str(e)) from e


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
