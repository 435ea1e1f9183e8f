"""SPIRE as the bus's issuer: Volt's processes take their X.509-SVIDs from a
real spire-agent's Workload API, check them against the trust bundle, and keep
serving while SPIRE rotates them.

SPIRE here is built from the Go module (``tests/support/build-spire``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import openai
import pytest
from cryptography import x509
from support.requirements import require
from support.spire import Spire

from volt.identity import workload
from volt.identity.spiffe_workload import WorkloadApiError, WorkloadApiSvid, verify_chain
from volt.identity.workload_ca import WorkloadCA
from volt.testing import Cluster
from volt.wire import permissions, subjects

TD = "volt.test"
SVID_TTL_S = 16
"""Short enough to watch a rotation (at half of it) and an expiry within a test."""
CHAT = {"model": "volt-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def spire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spire]:
    if shutil.which("go") is None:
        require("Go is not installed: spire-server and spire-agent are built from source")
    with Spire(tmp_path_factory.mktemp("spire"), trust_domain=TD) as server:
        yield server


def _source(spire: Spire, role: str, name: str = "") -> WorkloadApiSvid:
    return WorkloadApiSvid(str(spire.socket), TD, lambda identity: identity.role == role
                           and (not name or identity.name == name), timeout_s=30)


def _wait_offered(spire: Spire, spiffe_id: str) -> None:
    """Entries reach the agent at its next sync (every few seconds)."""
    spire.svid_files(spiffe_id, spire.root / "probe")


def test_a_process_takes_its_own_verified_svid(spire: Spire, tmp_path: Path) -> None:
    n1, n2 = workload.node_id(TD, "fra", "n1"), workload.node_id(TD, "fra", "n2")
    spire.register(n1)
    spire.register(n2)
    _wait_offered(spire, n1)
    _wait_offered(spire, n2)

    source = _source(spire, "node", "n1")
    try:
        assert source.spiffe_id == n1
        assert (source.identity.role, source.identity.metro, source.identity.name) == \
            ("node", "fra", "n1")
    finally:
        source.close()
    # Both node SVIDs match "a node": the process must not guess which it is.
    with pytest.raises(WorkloadApiError, match="offers 2 SVIDs"):
        _source(spire, "node")

    # The chain check is cryptography's verifier, against the bundle only.
    files = spire.svid_files(n1, tmp_path / "n1")
    chain = x509.load_pem_x509_certificates(files.certificate.read_bytes())
    spire_bundle = x509.load_pem_x509_certificates(files.bundle.read_bytes())
    assert verify_chain(chain, spire_bundle) == n1
    other_ca = WorkloadCA.in_folder(tmp_path / "other-ca", TD)
    with pytest.raises(WorkloadApiError, match="does not chain"):
        verify_chain(chain, [other_ca.certificate])
    forged = x509.load_pem_x509_certificates(other_ca.issue(n1).certificate_pem)
    with pytest.raises(WorkloadApiError, match="does not chain"):
        verify_chain(forged, spire_bundle)
    expired = chain[0].not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(WorkloadApiError, match="does not chain"):
        verify_chain(chain, spire_bundle, now=expired)


@pytest.fixture(scope="module")
def on_spire(spire: Spire, tmp_path_factory: pytest.TempPathFactory,
             tiny_model: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("spire-cluster"), engine_mode="instant",
                 model_cache=tiny_model, spiffe_issuer=spire,
                 svid_ttl_s=SVID_TTL_S) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable(metro="fra", timeout_s=120)
        yield cluster


def _rotations(log_text: str) -> int:
    return log_text.count("bus SVID from the Workload API") - 1


def test_volt_runs_on_spire_svids_and_survives_their_rotation(on_spire: Cluster) -> None:
    started = time.monotonic()
    with openai.OpenAI(base_url=on_spire.base_url, api_key=on_spire.api_key,
                       max_retries=0, timeout=60) as client:
        assert client.chat.completions.create(**CHAT).choices[0].message.content is not None

        # SPIRE rotates each SVID at half its lifetime; every process takes the new one.
        deadline = started + 4 * SVID_TTL_S
        while not all(_rotations(on_spire.services[name].log_text()) >= 1
                      for name in ("scheduler", "api", "fra-1")):
            assert time.monotonic() < deadline, "no SVID rotation reached every process"
            time.sleep(0.5)
        # Once every first SVID has expired, only a rotated certificate can
        # reconnect: restart the bus so that every process must.
        time.sleep(max(0.0, started + SVID_TTL_S + 1 - time.monotonic()))
        on_spire.nats.restart()
        on_spire.wait_routable(metro="fra", timeout_s=60)
        # The node may leave placement once more right after the bus is back
        # (the scheduler sweeps the heartbeats it missed during the restart):
        # served again within a few heartbeats is what counts.
        answer = client.with_options(max_retries=5).chat.completions.create(**CHAT)
        assert answer.choices[0].message.content is not None
    for name in ("scheduler", "api", "fra-1"):
        log = on_spire.services[name].log_text()
        assert "Workload API update refused" not in log, name
        assert on_spire.services[name].alive(), name


async def test_a_spire_node_identity_is_least_privilege(on_spire: Cluster) -> None:
    """SPIRE issues the SVID; the bus still grants a node only its own subjects."""
    assert on_spire.spiffe_issuer is not None
    source = await asyncio.to_thread(_source, on_spire.spiffe_issuer, "node", "fra-1")
    violations: list[str] = []

    async def error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    nc = await nats.connect(on_spire.nats.url, tls=source.follow(), error_cb=error,
                            inbox_prefix=permissions.inbox_for("node", "fra-1"))
    try:
        await nc.publish(subjects.node_event("ams-1", "heartbeat"), b"forged")
        await nc.subscribe(subjects.node_prefix("ams-1"))
        await nc.flush()
        deadline = time.monotonic() + 5
        while len(violations) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert any("permissions violation for publish" in v for v in violations), violations
        assert any("permissions violation for subscription" in v for v in violations), violations
    finally:
        await nc.close()
        source.close()
