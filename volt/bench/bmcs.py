"""Emulated Redfish BMCs for Vault's tests and ``volt bench vault``: DMTF-shaped
ones from OpenStack's ``sushy-emulator`` (PyPI ``sushy-tools``, in the test and
bench extras), fake driver, on free loopback ports.

One emulator process is one BMC with its own systems, state folder and
htpasswd file (a bcrypt hash of its password); with ``accounts=True`` it also
offers a Redfish AccountService, through which its password can be changed.
Its power changes apply 1-11 s after they are asked (the fake driver's
"hardware"), so callers run nodes in parallel and bound every wait.

    with Bmc(tmp_path / "bmc-1", systems=["node-1"]) as bmc:
        bmc.url, bmc.username, bmc.password
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

import bcrypt

from volt.processes import _die_with_parent
from volt.up.nats_server import free_port

READY_TIMEOUT_S = 30.0


class Bmc:
    def __init__(self, folder: Path, *, systems: list[str], username: str = "admin",
                 password: str | None = None, accounts: bool = False) -> None:
        self.folder = folder
        self.accounts = accounts
        """Offer a Redfish AccountService (``volt/bench/bmc_accounts.py``), as
        real BMCs do: its password can then be changed over Redfish."""
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.systems = {name: str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{folder}/{name}"))
                        for name in systems}
        """System name -> its Redfish id (a UUID)."""
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Bmc:
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> Bmc:
        """Start the process without waiting for it to answer (start many at
        once, then ``wait_ready`` each). From the thread that will outlive
        it: the emulator dies with the thread that started it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (self.folder / "htpasswd").write_text(f"{self.username}:{digest}\n")
        self.port = free_port()
        fake_systems = [{"uuid": system_id, "name": name, "power_state": "Off",
                         "nics": [{"mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                                   "ip": f"10.0.{i // 256}.{i % 256}"}]}
                        for i, (name, system_id) in enumerate(self.systems.items(), start=1)]
        config = self.folder / "emulator.conf"
        config.write_text(
            f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}\n"
            f"SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake_systems!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.folder / 'state')!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(self.folder / 'htpasswd')!r}\n")
        command = [sys.executable, "-m", "volt.bench.bmc_accounts"] if self.accounts else [
            shutil.which("sushy-emulator") or str(Path(sys.executable).with_name(
                "sushy-emulator"))]
        log = open(self.folder / "emulator.log", "ab")  # noqa: SIM115 - held by the child
        self.process = subprocess.Popen(
            [*command, "--config", str(config), "--fake"], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()
        return self

    def accepts(self, password: str) -> bool:
        """Whether the BMC takes this password now."""
        token = base64.b64encode(f"{self.username}:{password}".encode()).decode()
        request = urllib.request.Request(f"{self.url}/redfish/v1/Systems",
                                         headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return False
            raise

    def wait_ready(self) -> None:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sushy-emulator exited:\n{self.log()}")
            request = urllib.request.Request(f"{self.url}/redfish/v1/Systems",
                                             headers={"Authorization": f"Basic {token}"})
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sushy-emulator not ready within {READY_TIMEOUT_S}s\n{self.log()}")

    def log(self) -> str:
        path = self.folder / "emulator.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Bmc:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
