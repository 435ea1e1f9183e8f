"""A software TPM: swtpm on free loopback ports, manufactured by ``swtpm_setup``
with an EK certificate from swtpm's local CA, booted with a measured-boot event
log of the caller's choosing.

``volt up`` gives its node one where swtpm is installed, so a development
machine runs the whole attestation path (enrolment, the node's bus SVID earned
by attestation, quotes) instead of skipping it; the tests use it the same way.
It proves nothing about the machine it runs on: its "boot" is a fixed list of
measurements (``DEVELOPMENT_BOOT``), and its policy approves exactly those.

``boot`` plays firmware: it extends the measurements into the PCRs and keeps
the matching TCG2 event log. ``reboot`` restarts swtpm on the same state
(TPM2_Startup(CLEAR): the reset count goes up, the PCRs go back to zero).
Each start resets the dictionary-attack lockout (a test that fails mid-way
must not lock the next one out); ``Tpm`` flushes leftover transient objects.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from volt.attestation import event_log
from volt.processes import _die_with_parent
from volt.up.nats_server import free_port

DEVELOPMENT_BOOT = [
    (0, event_log.EV_S_CRTM_VERSION, b"volt development firmware (swtpm)"),
    (7, event_log.EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot=1"),
    (4, event_log.EV_EFI_BOOT_SERVICES_APPLICATION, b"volt development bootloader"),
    (9, event_log.EV_IPL, b"volt development kernel"),
]
"""What ``volt up``'s software TPM measures at each start (it has no real boot)."""


def unavailable() -> str | None:
    """Why this machine cannot run a software TPM (None: it can)."""
    missing = [tool for tool in ("swtpm", "swtpm_setup") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        return "tpm2-pytss is not installed (pip install 'volt[tpm]')"
    return None


def localca_dir() -> Path:
    """Where swtpm's local CA keeps its certificates (its configuration says)."""
    for config in (Path.home() / ".config" / "swtpm-localca.conf",
                   Path("/etc/swtpm-localca.conf")):
        with contextlib.suppress(OSError):
            for line in config.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "statedir":
                    return Path(value.strip())
    return Path("/var/lib/swtpm-localca")


def manufacturer_cas() -> bytes:
    """swtpm's local CA (its root and the issuer of EK certificates), as PEM."""
    folder = localca_dir()
    return (folder / "issuercert.pem").read_bytes() + \
        (folder / "swtpm-localca-rootca-cert.pem").read_bytes()


def development_policy() -> bytes:
    """The reference policy (JSON) that approves exactly ``DEVELOPMENT_BOOT``."""
    import hashlib

    import msgspec

    from volt.attestation.policy import ApprovedVersion, Component, Policy

    def approved(data: bytes) -> list[ApprovedVersion]:
        return [ApprovedVersion(version="dev", digests=[hashlib.sha256(data).hexdigest()])]

    firmware, secure_boot, bootloader, kernel = (data for _, _, data in DEVELOPMENT_BOOT)
    return msgspec.json.encode(Policy(name="volt-up-development", version=1, pcrs=[0, 4, 7, 9],
                                      components={
        "firmware": Component(pcrs=[0], approved=approved(firmware)),
        "bootloader": Component(pcrs=[4], approved=approved(bootloader)),
        "secure_boot": Component(pcrs=[7], approved=approved(secure_boot)),
        "kernel": Component(pcrs=[9], approved=approved(kernel))}))


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Swtpm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        # The swtpm TCTI finds the control channel at the server port + 1.
        self.port = free_port()
        while not _free(self.port + 1):
            self.port = free_port()
        self.ctrl_port = self.port + 1
        self.process: subprocess.Popen[bytes] | None = None
        self.log = b""

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def manufacture(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:  # swtpm's local CA then lives in the user's folders
            subprocess.run(["swtpm_setup", "--create-config-files", "skip-if-exist"],
                           check=True, capture_output=True, timeout=60)
        subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(self.state),
                        "--create-ek-cert", "--create-platform-cert", "--lock-nvram",
                        "--overwrite"], check=True, capture_output=True, timeout=60)

    def start(self) -> Swtpm:
        if not (self.state / "tpm2-00.permall").exists():
            self.manufacture()
        log = open(self.root / "swtpm.log", "ab")  # noqa: SIM115 - held by the child
        self.process = subprocess.Popen(
            ["swtpm", "socket", "--tpmstate", f"dir={self.state}", "--tpm2",
             "--server", f"type=tcp,port={self.port}",
             "--ctrl", f"type=tcp,port={self.ctrl_port}",
             "--flags", "not-need-init,startup-clear"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        timeout=1):
                break
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError((self.root / "swtpm.log").read_text()[-2000:])
            time.sleep(0.05)
        self._clear_lockout()
        return self

    def _clear_lockout(self) -> None:
        """A client that failed mid-way must not lock the next one out."""
        from tpm2_pytss.constants import ESYS_TR

        from volt.attestation.tpm import Tpm

        with Tpm(self.tcti) as tpm:
            tpm.esapi.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def reboot(self) -> None:
        self.stop()
        self.start()
        self.log = b""
        self.log_path.write_bytes(b"")

    def boot(self, measurements: list[tuple[int, int, bytes]]) -> bytes:
        """Measure ``(pcr, event type, data)`` as firmware would: extend each into
        its PCR and keep the event log. Returns the log."""
        from tpm2_pytss import TPML_DIGEST_VALUES, TPMT_HA
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG

        from volt.attestation.tpm import Tpm

        log, events = event_log.build(measurements)
        with Tpm(self.tcti) as tpm:
            for event in events:
                digest = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
                digest.digest.sha256 = event.digests[0x000B]
                tpm.esapi.pcr_extend(ESYS_TR.PCR0 + event.pcr, TPML_DIGEST_VALUES([digest]))
        self.log = log
        self.log_path.write_bytes(log)
        return log

    @property
    def log_path(self) -> Path:
        """Where the log is, as the kernel keeps a host's in securityfs."""
        return self.root / "binary_bios_measurements"

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
