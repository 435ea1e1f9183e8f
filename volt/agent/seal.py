"""The sealed engine: zero egress by construction.

Each engine process starts in a network namespace of its own, holding nothing
but a loopback interface: it can reach no host, no other engine and no name
server, whatever its code does. The agent reaches it only through its Unix
socket (a file, which a network namespace does not separate). The child
enters the namespace itself, between fork and exec (``seal_child``), so
nothing runs unsealed even for an instant.

The agent proves the seal in every heartbeat (``inspect``): the engine's
namespace is not the agent's, its only interface is ``lo``, and it has no
routes beyond loopback. The scheduler drains a node whose engines are not
sealed, unless the node runs with the explicit insecure development flag and
the scheduler allows such nodes (``volt up`` on a machine where sealing is
impossible: not root, no namespaces); then responses and ``/v1/models`` say
``insecure``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_PR_SET_PDEATHSIG = 1


class Seal(StrEnum):
    SEALED = "sealed"
    """Every engine in a namespace of its own with only loopback (checked)."""
    INSECURE = "insecure"
    """Started with the insecure development flag: engines share the host's network."""
    BROKEN = "broken"
    """Should be sealed, and is not (or could not be checked)."""


class SealUnavailable(Exception):
    """This host cannot seal engines (not root, or no network namespaces)."""


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def seal_child() -> None:  # runs in the child, between fork and exec
    """Die with the agent, lead a new session, and enter a network namespace
    of our own with loopback up. Any failure aborts the exec: an engine that
    could not be sealed never starts."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)}")
    _loopback_up()


def check_available() -> None:
    """``SealUnavailable`` unless this host can seal an engine (tries once, for real)."""
    pid = os.fork()
    if pid == 0:  # the child: try, and say how it went in the exit status
        code = 1
        with contextlib.suppress(BaseException):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) == 0:
                _loopback_up()
                code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        why = "not root" if os.geteuid() != 0 else "network namespaces are not available"
        raise SealUnavailable(f"engines cannot be sealed here ({why})")


@dataclass(frozen=True, slots=True)
class SealCheck:
    sealed: bool
    reason: str = ""


def _interfaces(pid: int) -> list[str]:
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


def inspect(pid: int) -> SealCheck:
    """Is process ``pid`` sealed? Read from /proc, as the kernel sees it."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
        if theirs == own:
            return SealCheck(False, "the engine shares the agent's network namespace")
        interfaces = _interfaces(pid)
        if interfaces != ["lo"]:
            return SealCheck(False, f"the engine's namespace has interfaces {interfaces}")
        routes = Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]
        if any(line.split() for line in routes):
            return SealCheck(False, "the engine's namespace has IPv4 routes")
        with contextlib.suppress(FileNotFoundError):  # IPv6 may be off
            for line in Path(f"/proc/{pid}/net/ipv6_route").read_text().splitlines():
                if line.split() and line.split()[-1] != "lo":
                    return SealCheck(False, "the engine's namespace has IPv6 routes")
    except OSError as exc:
        return SealCheck(False, f"could not inspect the engine ({exc.strerror or exc})")
    return SealCheck(True)
