"""Start a program whose IPv4 ``connect()`` calls the kernel refuses with EACCES, while a flag file exists.

``python -m exporter.demo.deny_connect FLAG -- PROGRAM ARGS...``: when ``FLAG`` exists, install a
seccomp filter (no new privileges, then ``PR_SET_SECCOMP``) that makes every ``connect()`` with a
16-byte address (``sockaddr_in``) fail with EACCES, then exec ``PROGRAM``; without ``FLAG``, exec it
unchanged. The demo stack starts nginx through it: SELinux cannot run on these machines, and this is
how the same denial reaches nginx for real (``connect() to 127.0.0.1:8000 failed (13: Permission
denied)``) while unix sockets (longer addresses) still connect. Linux on x86_64 or aarch64 only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

_ARCHES = {"x86_64": (0xC000003E, 42), "aarch64": (0xC00000B7, 203)}
"""``uname -m`` -> (AUDIT_ARCH_*, __NR_connect)."""
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_SOCKADDR_IN_BYTES = 16


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def program(arch: int, connect_nr: int) -> list[tuple[int, int, int, int]]:
    """The BPF program: ``connect(fd, addr, 16)`` -> EACCES, every other call allowed."""
    return [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 0, 5, arch),
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JEQ_K, 0, 3, connect_nr),
        (_LD_W_ABS, 0, 0, 32),  # the low half of args[2], addrlen
        (_JEQ_K, 0, 1, _SOCKADDR_IN_BYTES),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EACCES),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]


def install() -> None:
    """Install the filter on this process (and what it execs and forks); OSError when the kernel refuses."""
    arch, connect_nr = _ARCHES[os.uname().machine]
    rows = program(arch, connect_nr)
    filters = (_Filter * len(rows))(*(_Filter(*row) for row in rows))
    prog = _Program(len(rows), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m exporter.demo.deny_connect FLAG -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    flag, command = argv[0], argv[2:]
    if os.path.exists(flag):
        install()
    os.execv(command[0], command)  # noqa: S606 (the point: become the program, no shell)
    return 127  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
