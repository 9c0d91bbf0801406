"""Classic BPF socket filters (SO_ATTACH_FILTER): the kernel drops what a probe socket
does not want before it is queued, so the probe thread never wakes for the host's
ordinary traffic. The programs run on the IPv4 packet (raw IP sockets)."""

from __future__ import annotations

import ctypes
import socket
import struct

_SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h; not exported by the socket module

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k


_MAX_DISCARDED = 1024  # packets queued before the filter: bounded, the caller must get its turn
_RECV_BUFFER = 65535


def attach(sock: socket.socket, program: tuple[Instruction, ...]) -> None:
    """Attach `program`, then discard what the socket queued before it (unfiltered);
    raises OSError when the kernel refuses it."""
    code = (ctypes.c_ubyte * (8 * len(program)))(*b"".join(struct.pack("HBBI", *insn) for insn in program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (pointer-aligned);
    # the kernel copies the program during the call, so `code` may go after it.
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HL", len(program), ctypes.addressof(code)))
    for _ in range(_MAX_DISCARDED):
        try:
            sock.recv(_RECV_BUFFER, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
