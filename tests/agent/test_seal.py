"""The sealed engine, for real (network namespaces need root; CI runs as root):
what a process started the way the agent starts engines can and cannot reach."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from support.requirements import require

from volt.agent.seal import SealUnavailable, check_available, inspect, seal_child
from volt.processes import _die_with_parent

PROBE = """
import socket, sys
what, target = sys.argv[1], sys.argv[2]
try:
    if what == "connect":
        host, port = target.split(":")
        socket.create_connection((host, int(port)), timeout=3).close()
    elif what == "resolve":
        socket.getaddrinfo(target, 443)
    elif what == "listen":
        server = socket.create_server(("127.0.0.1", int(target)))
        print("listening", flush=True)
        server.accept()
    print("reached")
except OSError as exc:
    print(f"refused {type(exc).__name__}")
"""


@pytest.fixture(autouse=True)
def _needs_namespaces() -> None:
    try:
        check_available()
    except SealUnavailable as exc:
        require(str(exc))


def run(what: str, target: str, *, sealed: bool = True) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, what, target], capture_output=True, text=True,
        timeout=30, preexec_fn=seal_child if sealed else _die_with_parent)
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def host_listener() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def test_a_sealed_engine_cannot_reach_the_hosts_loopback(host_listener: int) -> None:
    assert run("connect", f"127.0.0.1:{host_listener}", sealed=False) == "reached"  # control
    assert run("connect", f"127.0.0.1:{host_listener}").startswith("refused")


def test_a_sealed_engine_cannot_reach_another_engine() -> None:
    port = 23_456
    other = subprocess.Popen([sys.executable, "-c", PROBE, "listen", str(port)],
                             stdout=subprocess.PIPE, text=True, preexec_fn=seal_child)
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "listening"
        assert inspect(other.pid).sealed
        assert run("connect", f"127.0.0.1:{port}").startswith("refused")
    finally:
        other.kill()
        other.wait()


def test_a_sealed_engine_cannot_resolve_a_name() -> None:
    started = time.monotonic()
    assert run("resolve", "example.com").startswith("refused")
    assert time.monotonic() - started < 20  # it fails, it does not hang


def test_the_agent_proves_the_seal_from_proc() -> None:
    sealed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                              preexec_fn=seal_child)
    open_ = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             preexec_fn=_die_with_parent)
    try:
        time.sleep(0.3)
        assert inspect(sealed.pid).sealed
        check = inspect(open_.pid)
        assert not check.sealed
        assert "shares the agent's network namespace" in check.reason
    finally:
        for process in (sealed, open_):
            process.kill()
            process.wait()
