"""Tenants never see each other: another org's resource answers 404 — never 403,
never 200 — on every route that takes an id.

One row per route of the app (``volt/identity/policy.py`` lists them all); a
route missing here fails ``test_every_route_has_an_isolation_row``, so every
future route must say how it keeps orgs apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from volt.finetune.model_ids import org_token
from volt.identity.orgs import Orgs
from volt.identity.policy import RULES
from volt.identity.principal import Role
from volt.identity.sessions import Sessions
from volt.store import Catalog, Database
from volt.store.resources import ResourceStore
from volt.testing import Cluster


@dataclass
class World:
    cluster: Cluster
    mine: str
    """An owner key of org A (the caller)."""
    my_org: str
    their_org: str
    their_key_id: str
    their_key: str
    their_lease: str
    """A Forge lease of org B, written straight to the store (no GPUs here)."""
    their_rack: str
    """A Vault rack org B holds, written straight to the store (no BMCs here)."""
    free_rack: str
    """A rack nobody holds (available): no org may see it either."""
    session: str
    """A console session of an admin of org A."""
    csrf: str
    their_file: str = ""
    """A training file of org B (its record, written straight to the store)."""
    their_job: str = ""
    """A fine-tuning job of org B, on that file."""
    their_model: str = ""
    """A tuned model of org B (a succeeded job's, with a checkpoint)."""


@dataclass(frozen=True)
class Probe:
    """Call ``path(world)`` as org A; the answer must be ``status`` (404 for
    another org's id)."""

    path: Callable[[World], str]
    status: int = 404
    body: dict[str, object] | Callable[[World], dict[str, object]] | None = None
    form: bool = False


@dataclass(frozen=True)
class NoId:
    """The route takes no id: there is nothing of another org to name."""

    why: str


def _org_key(w: World) -> str:
    return f"/v1/orgs/{w.my_org}/api-keys/{w.their_key_id}"


def _their_lease(w: World) -> str:
    return f"/v1/forge/leases/{w.their_lease}"


def _racks(suffix: str = "") -> list[Probe]:
    """Org B's rack, and a rack nobody holds."""
    return [Probe(lambda w: f"/v1/vault/racks/{w.their_rack}{suffix}"),
            Probe(lambda w: f"/v1/vault/racks/{w.free_rack}{suffix}")]


def _jobs(base: str) -> dict[tuple[str, str], list[Probe] | NoId]:
    """Org B's fine-tuning job, on every job route of one spelling."""
    def job(suffix: str = "") -> Callable[[World], str]:
        return lambda w: f"{base}/{w.their_job}{suffix}"

    return {
        ("POST", base): [Probe(lambda w: base, body=lambda w: {
            "model": "volt-tiny", "training_file": w.their_file})],
        ("GET", base): NoId("lists the caller's org (test_fine_tuning)"),
        ("GET", base + "/{job_id}"): [Probe(job())],
        ("POST", base + "/{job_id}/cancel"): [Probe(job("/cancel"), body={})],
        ("GET", base + "/{job_id}/events"): [Probe(job("/events"))],
        ("GET", base + "/{job_id}/checkpoints"): [Probe(job("/checkpoints"))],
    }


ISOLATION: dict[tuple[str, str], list[Probe] | NoId] = {
    ("POST", "/v1/chat/completions"): NoId("the body names a model; catalogs: test_catalog"),
    ("POST", "/v1/completions"): NoId("as chat"),
    ("POST", "/v1/embeddings"): NoId("as chat"),
    ("GET", "/v1/models"): NoId("lists the caller's catalog only (test_catalog)"),
    ("GET", "/v1/models/{model_id}"): [Probe(lambda w: "/v1/models/volt-tiny"),
                                       Probe(lambda w: f"/v1/models/{w.their_model}")],
    ("DELETE", "/v1/models/{model_id}"): [
        Probe(lambda w: f"/v1/models/{w.their_model}"),
        Probe(lambda w: f"/v1/models/{w.their_model}:ckpt-step-7")],
    **{key: row for base in ("/v1/fine-tuning/jobs", "/v1/fine_tuning/jobs")
       for key, row in _jobs(base).items()},
    ("POST", "/v1/files"): NoId("stores in the caller's org"),
    ("GET", "/v1/files"): NoId("lists the caller's org (test_fine_tuning)"),
    ("GET", "/v1/files/{file_id}"): [Probe(lambda w: f"/v1/files/{w.their_file}")],
    ("GET", "/v1/files/{file_id}/content"): [
        Probe(lambda w: f"/v1/files/{w.their_file}/content")],
    ("DELETE", "/v1/files/{file_id}"): [Probe(lambda w: f"/v1/files/{w.their_file}")],
    ("GET", "/v1/forge/availability"): NoId("the fleet's free capacity: no org's data"),
    ("POST", "/v1/forge/leases"): NoId("creates in the caller's org"),
    ("GET", "/v1/forge/leases"): NoId("lists the caller's org (test_forge)"),
    ("GET", "/v1/forge/leases/{lease_id}"): [Probe(_their_lease)],
    ("DELETE", "/v1/forge/leases/{lease_id}"): [Probe(_their_lease)],
    ("POST", "/v1/forge/leases/{lease_id}/kubeconfig"): [
        Probe(lambda w: _their_lease(w) + "/kubeconfig", body={})],
    ("DELETE", "/v1/forge/leases/{lease_id}/kubeconfigs/{kubeconfig_id}"): [
        Probe(lambda w: _their_lease(w) + "/kubeconfigs/kc-0123456789ab")],
    ("POST", "/v1/vault/racks"): NoId("reserves for the caller's org"),
    ("GET", "/v1/vault/racks"): NoId("lists the caller's org (test_vault)"),
    ("GET", "/v1/vault/racks/{rack_id}"): _racks(),
    ("DELETE", "/v1/vault/racks/{rack_id}"): _racks(),
    ("POST", "/v1/vault/racks/{rack_id}/redfish-credentials"): [
        Probe(lambda w: f"/v1/vault/racks/{w.their_rack}/redfish-credentials", body={}),
        Probe(lambda w: f"/v1/vault/racks/{w.free_rack}/redfish-credentials", body={})],
    ("DELETE", "/v1/vault/racks/{rack_id}/redfish-credentials/{credential_id}"):
        _racks("/redfish-credentials/rfc-01234567"),
    ("GET", "/v1/vault/racks/{rack_id}/attestation"): _racks("/attestation"),
    ("GET", "/v1/vault/racks/{rack_id}/talos-config"): _racks("/talos-config"),
    ("GET", "/.well-known/volt/verifier-keys"): NoId("public: the verifier's public keys"),
    ("GET", "/v1/usage"): NoId("the caller's org only (test_metering)"),
    ("GET", "/v1/me"): NoId("the caller"),
    ("GET", "/v1/orgs/{org_id}/api-keys"): [
        Probe(lambda w: f"/v1/orgs/{w.their_org}/api-keys")],
    ("POST", "/v1/orgs/{org_id}/api-keys"): [
        Probe(lambda w: f"/v1/orgs/{w.their_org}/api-keys", body={"name": "sneaky"})],
    ("GET", "/v1/orgs/{org_id}/api-keys/{key_id}"): [
        Probe(lambda w: f"/v1/orgs/{w.their_org}/api-keys/{w.their_key_id}"),
        Probe(_org_key)],
    ("DELETE", "/v1/orgs/{org_id}/api-keys/{key_id}"): [
        Probe(lambda w: f"/v1/orgs/{w.their_org}/api-keys/{w.their_key_id}"),
        Probe(_org_key)],
    ("GET", "/v1/orgs/{org_id}/audit-events"): [
        Probe(lambda w: f"/v1/orgs/{w.their_org}/audit-events")],
    ("GET", "/v1/audit/checkpoint"): NoId("the log's signed head: hashes only, no org's data"),
    ("GET", "/v1/audit/consistency"): NoId("hashes only"),
    ("POST", "/oauth/device/code"): NoId("public: starts a grant"),
    ("POST", "/oauth/token"): NoId("the device code is the caller's own secret"),
    ("GET", "/console/login"): NoId("public"),
    ("GET", "/console/callback"): NoId("public: completes the caller's own sign-in"),
    ("GET", "/console"): NoId("shows the signed-in user's own orgs"),
    ("POST", "/console/logout"): NoId("the caller's own session"),
    ("POST", "/console/orgs/{org_id}/api-keys"): [
        Probe(lambda w: f"/console/orgs/{w.their_org}/api-keys", form=True)],
    ("POST", "/console/orgs/{org_id}/api-keys/{key_id}/revoke"): [
        Probe(lambda w: f"/console/orgs/{w.their_org}/api-keys/{w.their_key_id}/revoke",
              form=True),
        Probe(lambda w: f"/console/orgs/{w.my_org}/api-keys/{w.their_key_id}/revoke",
              form=True)],
    ("GET", "/device"): NoId("lists the user's own orgs"),
    ("POST", "/device"): [Probe(lambda w: "/device", form=True)],
    ("GET", "/healthz"): NoId("public"),
    ("GET", "/readyz"): NoId("public"),
    ("GET", "/openapi.yaml"): NoId("public"),
    ("GET", "/metrics"): NoId("public"),
}


def test_every_route_has_an_isolation_row() -> None:
    assert set(ISOLATION) == set(RULES)
    for (_, path), row in ISOLATION.items():
        if isinstance(row, NoId):
            assert "{" not in path, path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    with Cluster(tmp_path_factory.mktemp("isolation"), engine_mode="instant",
                 model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        cluster.set_catalog("org-a", Catalog(models=frozenset({"some-other-model"})))
        mine = cluster.add_key("org-a")
        their_key = cluster.add_key("org-b")
        their_key_id = json.loads(cluster.request("/v1/me", key=their_key)[2])["credential_id"]

        org_a = cluster.org_id("org-a")

        async def console_session() -> tuple[str, str]:
            db = Database(cluster.store_url)
            try:
                orgs = Orgs(db)
                user = await orgs.ensure_user("https://idp.test", "admin-a")
                await orgs.set_member(org_a, user, Role.ADMIN)
                sessions = Sessions(db)
                session_id = await sessions.create(user, "test")
                session = await sessions.get(session_id)
                assert session is not None
                return session_id, session.csrf_token
            finally:
                await db.close()

        org_b = cluster.org_id("org-b")
        their_model = f"ft:volt-tiny:{org_token(org_b)}::ftjob-{'b' * 24}"

        async def their_lease() -> str:
            db = Database(cluster.store_url)
            try:
                record = await ResourceStore(db).create(
                    kind="lease", id="lease-0123456789ab", org_id=org_b,
                    state="active", now=time.time(), status={"namespace": "volt-x"},
                    spec={"gpu_model": "H100", "gpu_count": 1, "metro": "fra", "tier": None,
                          "starts_at": time.time(), "ends_at": time.time() + 3600})
                return record.id
            finally:
                await db.close()

        async def racks() -> tuple[str, str]:
            db = Database(cluster.store_url)
            node = {"name": "", "gpu_model": "H100", "gpus": 8, "bmc_url": "http://bmc.invalid",
                    "bmc_username": "admin", "bmc_password": "aesgcm1:", "system_id": "1"}
            try:
                for rack_id, org, state in (("rack-b", org_b, "ready"),
                                            ("rack-free", "", "available")):
                    await ResourceStore(db).create(
                        kind="rack", id=rack_id, org_id=org, state=state, now=time.time(),
                        status={}, spec={"metro": "fra", "tier": "standard",
                                         "cleaning": "erase",
                                         "nodes": [{**node, "name": f"{rack_id}-n1"}]})
                return "rack-b", "rack-free"
            finally:
                await db.close()

        async def fine_tuning() -> tuple[str, str]:
            db = Database(cluster.store_url)
            try:
                store = ResourceStore(db)
                await store.create(kind="file", id="file-b", org_id=org_b, state="processed",
                                   now=time.time(), status={}, spec={
                                       "filename": "b.jsonl", "bytes": 10,
                                       "purpose": "fine-tune", "metro": "fra", "examples": 1,
                                       "sha256": "", "created_by": ""})
                await store.create(kind="fine_tuning_job", id="ftjob-b", org_id=org_b,
                                   state="running", now=time.time(), status={}, spec={
                                       "model": "volt-tiny", "training_file": "file-b",
                                       "validation_file": None, "suffix": "", "seed": 1,
                                       "metro": "fra", "hyperparameters": {
                                           "n_epochs": 1, "batch_size": 1,
                                           "learning_rate_multiplier": 1.0,
                                           "lora_rank": 8, "lora_alpha": 16}})
                succeeded = "ftjob-" + "b" * 24
                await store.create(kind="fine_tuning_job", id=succeeded, org_id=org_b,
                                   state="succeeded", now=time.time(), status={
                                       "fine_tuned_model": their_model,
                                       "checkpoints": [{"id": "ftckpt-b", "created_at": 1,
                                                        "step_number": 7}]},
                                   spec={"model": "volt-tiny", "training_file": "file-b",
                                         "validation_file": None, "suffix": "", "seed": 1,
                                         "metro": "fra", "hyperparameters": {}})
                return "file-b", "ftjob-b"
            finally:
                await db.close()

        session, csrf = asyncio.run(console_session())
        their_rack, free_rack = asyncio.run(racks())
        their_file, their_job = asyncio.run(fine_tuning())
        yield World(cluster, mine, cluster.org_id("org-a"), cluster.org_id("org-b"),
                    their_key_id, their_key, asyncio.run(their_lease()), their_rack, free_rack,
                    session, csrf, their_file, their_job, their_model)


PROBES = [(method, path, index, probe)
          for (method, path), row in ISOLATION.items() if isinstance(row, list)
          for index, probe in enumerate(row)]


@pytest.mark.parametrize(("method", "route", "index", "probe"), PROBES,
                         ids=[f"{m} {p} #{i}" for m, p, i, _ in PROBES])
def test_another_orgs_resource_is_404(world: World, method: str, route: str, index: int,
                                      probe: Probe) -> None:
    base = f"http://127.0.0.1:{world.cluster.api_port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        if probe.form:
            response = client.request(method, probe.path(world), headers={
                "Cookie": f"volt_session={world.session}"}, data={
                "csrf_token": world.csrf, "name": "x", "user_code": "BCDF-GHJK",
                "org_id": world.their_org, "action": "approve"})
        else:
            body = probe.body(world) if callable(probe.body) else probe.body
            response = client.request(method, probe.path(world), json=body,
                                      headers={"Authorization": f"Bearer {world.mine}"})
    assert response.status_code == probe.status, response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    # And the other org's key is untouched.
    assert world.cluster.request("/v1/me", key=world.their_key)[0] == 200
