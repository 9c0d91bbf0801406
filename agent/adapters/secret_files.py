"""Reading a secret (the API token, a tunnel's PSK) from a file the way a hostile local
user cannot subvert: one open that follows no symlink and never blocks, every check made
on that descriptor (so nothing can be swapped in between), a bounded read.

Messages name the file and the fix, never a byte of its content.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_SECRET_FILE = 4096  # bytes; a token or a PSK is far shorter
_GROUP_OTHER = 0o077


class SecretFileError(Exception):
    """The file cannot be used; the message names it and says what to do."""


def read_secret_file(path: str, what: str, *, private: bool = True) -> str:
    """The file's text, stripped. `what` names it in messages ("token file"; "" for the
    path alone).

    With `private`, the file must be owned by root or by this process's user and be
    neither readable nor writable by group or others. Raises SecretFileError."""
    allowed = tuple(sorted({0, os.geteuid()}))
    name = f"{what} {path}" if what else path
    try:
        # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError as e:
        raise SecretFileError(f"{name} does not exist") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SecretFileError(f"{name} is a symbolic link; name the file itself "
                                  f"(e.g. {os.path.realpath(path)})") from e
        raise SecretFileError(f"cannot open {name}: {e.strerror}") from e
    try:
        _check(path, name, os.fstat(fd), private, allowed)
        data = _read_bounded(fd, name)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        # The decoder's own message quotes bytes of the secret: keep it out.
        raise SecretFileError(f"{name} is not UTF-8 text") from None
    if not text:
        raise SecretFileError(f"{name} is empty")
    return text


def _check(path: str, name: str, st: os.stat_result, private: bool, owners: tuple[int, ...]) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{name} is not a regular file ({_kind(st.st_mode)}); "
                              "it must be a plain file holding only the secret")
    if not private:
        return
    if st.st_uid not in owners:
        names = " or ".join("root" if uid == 0 else f"uid {uid}" for uid in owners)
        raise SecretFileError(f"{name} is owned by uid {st.st_uid}, not by {names}; "
                              f"run: chown root {path}")
    if st.st_mode & _GROUP_OTHER:
        raise SecretFileError(f"{name} is readable or writable by group/others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    if st.st_size > MAX_SECRET_FILE:
        raise SecretFileError(f"{name} holds {st.st_size} bytes, more than {MAX_SECRET_FILE}; "
                              "it must hold only the secret")


def _read_bounded(fd: int, name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = os.read(fd, MAX_SECRET_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_SECRET_FILE:
                # The file grew after fstat: the same rule as for a big one.
                raise SecretFileError(f"{name} holds more than {MAX_SECRET_FILE} bytes; "
                                      "it must hold only the secret")
    except OSError as e:
        raise SecretFileError(f"cannot read {name}: {e.strerror}") from e
    return b"".join(chunks)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"
