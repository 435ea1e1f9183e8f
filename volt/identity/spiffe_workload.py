"""A process's bus identity from the SPIFFE Workload API (SPIRE), kept current.

Volt's own CA is the embedded default; a fleet that runs SPIRE gives each
process its X.509-SVID through the local spire-agent's Workload API socket
instead (``nats.spiffe_socket``). The ``spiffe`` library streams what the agent
sends — the first SVID, each rotation at half its lifetime, bundle changes —
but trusts it: it does not check that an SVID chains to the trust bundle. Volt
does, with cryptography's X.509 verifier, before a certificate is ever
presented; an update that fails the check is logged and the last good SVID
stays in use.

The Workload API may hold several SVIDs for one process (SPIRE matches entries
by selectors such as the Unix user, which several Volt processes can share);
the process takes the one whose SPIFFE ID names its role — and, for an agent,
its node — and refuses to start if that is not exactly one.

The TLS context is the one object nats-py reuses for every reconnection, so a
rotation loads the new certificate into it: the next connection presents it.
New bundle authorities are added to it too; Python's ``ssl`` cannot drop one,
so an authority SPIRE retires stays trusted by this process until it restarts
(SPIRE itself keeps a retired authority in the bundle until it expires).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from volt.identity.workload import WorkloadIdentity, parse_id, spiffe_id_in

if TYPE_CHECKING:
    from spiffe import X509Svid

log = logging.getLogger(__name__)

_SHA256 = hashes.SHA256()


class WorkloadApiError(Exception):
    """No usable SVID from the Workload API (none for this role, several, or one
    that does not chain to the trust bundle)."""


class NotOffered(WorkloadApiError):
    """None of the SVIDs offered is this process's (yet)."""


def verify_chain(chain: Sequence[x509.Certificate], authorities: Sequence[x509.Certificate],
                 now: dt.datetime | None = None) -> str:
    """The leaf's SPIFFE ID once ``chain`` verifies up to one of ``authorities``
    as a client certificate (signatures, validity, CA constraints, key usages);
    WorkloadApiError otherwise."""
    if not chain or not authorities:
        raise WorkloadApiError("an SVID and a trust bundle are both needed")
    verifier = (PolicyBuilder().store(Store(list(authorities)))
                .time(now or dt.datetime.now(dt.UTC)).build_client_verifier())
    try:
        verifier.verify(chain[0], list(chain[1:]))
        return spiffe_id_in(chain[0])
    except VerificationError as exc:
        raise WorkloadApiError(f"the SVID does not chain to the trust bundle: {exc}") from None
    except ValueError as exc:
        raise WorkloadApiError(str(exc)) from None


def _pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


class WorkloadApiSvid:
    """This process's SVID from the Workload API at ``socket`` (a path or a
    ``unix://`` URL), picked by ``wanted`` among the SPIFFE IDs of ``trust_domain``."""

    def __init__(self, socket: str, trust_domain: str,
                 wanted: Callable[[WorkloadIdentity], bool], *,
                 timeout_s: float = 30.0) -> None:
        # Imported here: grpc is only needed where SPIRE is used.
        from spiffe import TrustDomain, X509Source
        from spiffe.errors import PySpiffeError

        self.trust_domain = trust_domain
        self._wanted = wanted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._trusted: set[bytes] = set()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_3
        url = socket if socket.startswith("unix:") else f"unix://{os.path.abspath(socket)}"
        self._offered: list[X509Svid] = []
        try:
            self._source = X509Source(socket_path=url, timeout_in_seconds=timeout_s,
                                      svid_picker=self._offer)
        except PySpiffeError as exc:
            raise WorkloadApiError(f"the Workload API at {socket}: {exc}") from None
        self._td = TrustDomain(trust_domain)
        self.spiffe_id = ""
        self.identity = WorkloadIdentity("", "")
        self.expires_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        # A registration reaches the spire-agent at its next sync: a process
        # started right after its entry was created waits for it.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._take()
                break
            except NotOffered:
                if time.monotonic() >= deadline:
                    self._source.close()
                    raise
                time.sleep(0.5)
            except WorkloadApiError:
                self._source.close()
                raise
        self._source.subscribe_for_updates(self._updated)

    def _offer(self, svids: list[X509Svid]) -> X509Svid:
        """The library's picker sees every SVID of an update but may not fail (a
        failing picker closes the source for good): keep them all for ``_take``."""
        self._offered = list(svids)
        return svids[0]

    def _take(self) -> None:
        """Verify the Workload API's current SVID for this process and load it."""
        context = self._source.get_x509_context()
        bundle = context.x509_bundle_set.get_bundle_for_trust_domain(self._td)
        if bundle is None:
            raise WorkloadApiError(f"the Workload API has no bundle for {self.trust_domain}")
        authorities = sorted(bundle.x509_authorities, key=lambda c: c.serial_number)
        candidates = []
        offered = self._offered
        for svid in offered:
            try:
                identity = parse_id(str(svid.spiffe_id), self.trust_domain)
            except ValueError:
                continue
            if self._wanted(identity):
                candidates.append((svid, identity))
        if len(candidates) != 1:
            names = ", ".join(str(s.spiffe_id) for s in offered) or "none"
            raise (NotOffered if not candidates else WorkloadApiError)(
                f"the Workload API offers {len(candidates)} SVIDs for this process, not one "
                f"(offered: {names})")
        svid, identity = candidates[0]
        spiffe_id = verify_chain(svid.cert_chain, authorities)
        with self._lock:
            self._load(svid.cert_chain, svid.private_key, authorities)
            self.spiffe_id, self.identity = spiffe_id, identity
            self.expires_at = svid.leaf.not_valid_after_utc
        log.info("bus SVID from the Workload API", extra={
            "spiffe_id": spiffe_id, "expires_at": self.expires_at.isoformat()})

    def _load(self, chain: Sequence[x509.Certificate], key: PrivateKeyTypes,
              authorities: Sequence[x509.Certificate]) -> None:
        new = [a for a in authorities if a.fingerprint(_SHA256) not in self._trusted]
        if new:
            self.tls.load_verify_locations(cadata=_pem(new).decode())
            self._trusted.update(a.fingerprint(_SHA256) for a in new)
        # ssl loads a certificate and key only from files: they exist for the
        # moment of loading, in a private folder in memory where there is one.
        shm = Path("/dev/shm")
        with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as folder:
            certificate, private = Path(folder, "svid.pem"), Path(folder, "svid-key.pem")
            certificate.write_bytes(_pem(chain))
            private.touch(mode=0o600)
            private.write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            self.tls.load_cert_chain(certificate, private)

    def _updated(self) -> None:
        """The spiffe library's watcher thread: hand the update to the event loop,
        which is the only thread that opens connections with the context."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._refresh)
        else:
            self._refresh()

    def _refresh(self) -> None:
        try:
            self._take()
        except Exception as exc:  # keep the last good SVID; the next update may be good
            log.error("Workload API update refused, keeping the current SVID: %s", exc)

    def follow(self) -> ssl.SSLContext:
        """Apply later updates on the running event loop; the context to dial with."""
        self._loop = asyncio.get_running_loop()
        return self.tls

    def close(self) -> None:
        self._source.close()
