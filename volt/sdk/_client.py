"""``Client`` and ``AsyncClient``: Volt's non-OpenAI routes, typed, on httpx.

::

    from volt.sdk import Client

    with Client(base_url="http://127.0.0.1:8080", api_key="volt_sk_live_...") as volt:
        key = volt.keys.create("ci", scopes=["read"])
        print(key.key)              # shown once
        for k in volt.keys.list().data:
            print(k.id, k.redacted_key)

Spark itself stays on the official ``openai`` client.

Both clients retry 429 and 503 answers (and connection failures) up to
``max_retries`` times, waiting what ``Retry-After`` says (at most
``MAX_RETRY_WAIT_S``), then raise the typed error (``_errors.py``).
"""

from __future__ import annotations

import asyncio
import builtins
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from volt.protocol.common import Model, ModelDeleted, ModelList
from volt.protocol.finetune import (
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
)
from volt.protocol.forge import Availability, Kubeconfig, Lease, LeaseList
from volt.protocol.identity import (
    ApiKey,
    ApiKeyList,
    AuditRecord,
    Checkpoint,
    ConsistencyProof,
    CreatedApiKey,
    Me,
    TokenResponse,
)
from volt.protocol.usage import UsageReport
from volt.protocol.vault import (
    AttestationReport,
    Jwks,
    Rack,
    RackList,
    RedfishCredential,
    TalosConfig,
)
from volt.sdk import _calls as calls
from volt.sdk._credentials import Tokens, load_tokens, save_tokens
from volt.sdk._errors import APIConnectionError, APIStatusError, AuthenticationError, error_for
from volt.vault.report import verify_report

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
MAX_RETRY_WAIT_S = 60.0
RETRY_STATUSES = frozenset({429, 503})


def _base_url(value: str | None) -> str:
    url = (value or os.environ.get("VOLT_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    return url.removesuffix("/v1")  # the openai client's base URL works too


def _retry_wait(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        value = str(response.headers.get("retry-after", ""))
        if value.replace(".", "", 1).isdigit():
            return min(float(value), MAX_RETRY_WAIT_S)
    backoff: float = 0.5 * 2 ** attempt + random.random() * 0.1
    return min(backoff, MAX_RETRY_WAIT_S)


def _decode(call: calls.Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise error_for(response.status_code, body, dict(response.headers))
    if call.returns is bytes:  # a file (a tar, a YAML document), as it came
        return response.content  # type: ignore[return-value]
    return msgspec.json.decode(response.content, type=call.returns)


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, *, timeout: float,
                 max_retries: int, credentials_file: Path | None) -> None:
        self.base_url = _base_url(base_url)
        self.max_retries = max_retries
        self.timeout = timeout
        self._api_key = api_key or os.environ.get("VOLT_API_KEY")
        self._credentials_file = credentials_file
        self._tokens: Tokens | None = None if self._api_key else load_tokens(credentials_file)
        self._org_id: str | None = None
        if self._tokens is not None and _base_url(self._tokens.base_url) != self.base_url \
                and base_url is None and not os.environ.get("VOLT_BASE_URL"):
            self.base_url = _base_url(self._tokens.base_url)  # where `volt login` signed in

    def _headers(self, call: calls.Call[Any]) -> dict[str, str]:
        if not call.authenticated:
            return {}
        if self._api_key:
            return {"Authorization": f"Bearer {self._api_key}"}
        if self._tokens is not None:
            return {"Authorization": f"Bearer {self._tokens.access_token}"}
        raise AuthenticationError(
            "No credential: pass api_key=, set VOLT_API_KEY, or run `volt login`.", status=401)

    def _request_args(self, call: calls.Call[Any]) -> dict[str, Any]:
        return {"method": call.method, "url": self.base_url + call.path, "params": call.params,
                "json": call.json, "data": call.form, "files": call.files,
                "headers": self._headers(call), "timeout": self.timeout}

    def _should_refresh(self, call: calls.Call[Any], error: APIStatusError) -> bool:
        return (call.authenticated and not self._api_key and self._tokens is not None
                and error.status == 401)

    def _refreshed(self, answer: TokenResponse) -> None:
        assert self._tokens is not None
        self._tokens = Tokens(self._tokens.base_url, answer.access_token, answer.refresh_token,
                              time.time() + answer.expires_in, answer.scope,
                              self._tokens.client_id)
        save_tokens(self._tokens, self._credentials_file)


class Client(_Base):
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 2,
                 credentials_file: Path | None = None,
                 http: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries,
                         credentials_file=credentials_file)
        self._http = http or httpx.Client()
        self.keys = Keys(self)
        self.audit = Audit(self)
        self.models = Models(self)
        self.forge = Forge(self)
        self.vault = Vault(self)
        self.files = Files(self)
        self.fine_tuning = FineTuning(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, call: calls.Call[T]) -> T:
        """Send one call, with retries and (for ``volt login`` tokens) a refresh."""
        refreshed = False
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                if self._tokens is not None and call.authenticated and not self._tokens.fresh():
                    self._refresh()
                response = self._http.request(**self._request_args(call))
                return _decode(call, response)
            except APIStatusError as error:
                if self._should_refresh(call, error) and not refreshed:
                    self._refresh()
                    refreshed = True
                    continue
                if (error.status not in RETRY_STATUSES or attempt >= self.max_retries
                        or not call.retry):
                    raise
            except httpx.HTTPError as exc:
                if attempt >= self.max_retries or not call.retry:
                    raise APIConnectionError(f"{self.base_url}: {type(exc).__name__}") from exc
            time.sleep(_retry_wait(response, attempt))
            attempt += 1

    def _refresh(self) -> None:
        assert self._tokens is not None
        call = calls.refresh(self._tokens.client_id, self._tokens.refresh_token)
        self._refreshed(_decode(call, self._http.request(**self._request_args(call))))

    def org_id(self) -> str:
        if self._org_id is None:
            self._org_id = self.me().org_id
        return self._org_id

    def me(self) -> Me:
        return self.run(calls.me())

    def usage(self, *, start: str | int | None = None, end: str | int | None = None,
              group_by: list[str] | None = None) -> UsageReport:
        return self.run(calls.usage(start, end, group_by))


class Forge:
    """GPU leases: ``volt.forge.create("H100", 8, "fra", duration_s=86400)``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def availability(self, *, metro: str | None = None, tier: str | None = None,
                     gpu_model: str | None = None) -> Availability:
        return self._client.run(calls.forge_availability(metro, tier, gpu_model))

    def create(self, gpu_model: str, gpu_count: int, metro: str, *, tier: str | None = None,
               duration_s: int | None = None, ends_at: int | None = None,
               starts_at: int | None = None,
               egress_cidrs: builtins.list[str] | None = None) -> Lease:
        return self._client.run(calls.forge_lease_create(
            gpu_model, gpu_count, metro, tier=tier, duration_s=duration_s, ends_at=ends_at,
            starts_at=starts_at, egress_cidrs=egress_cidrs))

    def list(self, *, limit: int = 20, after: str | None = None,
             state: str | None = None) -> LeaseList:
        return self._client.run(calls.forge_lease_list(limit=limit, after=after, state=state))

    def get(self, lease_id: str) -> Lease:
        return self._client.run(calls.forge_lease_get(lease_id))

    def terminate(self, lease_id: str) -> Lease:
        return self._client.run(calls.forge_lease_terminate(lease_id))

    def kubeconfig(self, lease_id: str, *, ttl_s: int | None = None) -> Kubeconfig:
        return self._client.run(calls.forge_kubeconfig(lease_id, ttl_s))

    def revoke_kubeconfig(self, lease_id: str, kubeconfig_id: str) -> Lease:
        return self._client.run(calls.forge_kubeconfig_revoke(lease_id, kubeconfig_id))


class Vault:
    """Bare-metal racks: ``volt.vault.reserve("fra", gpu_model="H100", nodes=4)``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def reserve(self, metro: str, *, tier: str | None = None, gpu_model: str | None = None,
                nodes: int | None = None, talos_version: str | None = None) -> Rack:
        return self._client.run(calls.vault_rack_reserve(
            metro, tier=tier, gpu_model=gpu_model, nodes=nodes, talos_version=talos_version))

    def list(self, *, limit: int = 20, after: str | None = None,
             state: str | None = None) -> RackList:
        return self._client.run(calls.vault_rack_list(limit=limit, after=after, state=state))

    def get(self, rack_id: str) -> Rack:
        return self._client.run(calls.vault_rack_get(rack_id))

    def release(self, rack_id: str) -> Rack:
        return self._client.run(calls.vault_rack_release(rack_id))

    def attestation(self, rack_id: str) -> AttestationReport:
        return self._client.run(calls.vault_attestation(rack_id))

    def verifier_keys(self) -> Jwks:
        return self._client.run(calls.vault_verifier_keys())

    def talos_config(self, rack_id: str, *, node: str | None = None) -> TalosConfig:
        return self._client.run(calls.vault_talos_config(rack_id, node))

    def redfish_credential(self, rack_id: str, *, ttl_s: int | None = None
                           ) -> RedfishCredential:
        return self._client.run(calls.vault_redfish_credential(rack_id, ttl_s))

    def revoke_redfish_credential(self, rack_id: str, credential_id: str) -> Rack:
        return self._client.run(calls.vault_redfish_credential_revoke(rack_id, credential_id))

    def talos_files(self, rack_id: str, *, node: str | None = None,
                    format: str = "tar") -> bytes:
        """``tar``: every file (secrets.yaml, talosconfig, <node>.yaml); ``yaml``:
        one node's configuration."""
        return self._client.run(calls.vault_talos_files(rack_id, node, format))

    def verified_attestation(self, rack_id: str, jwks: Jwks | None = None) -> dict[str, Any]:
        """The rack's report, checked against the verifier's keys (fetched, or
        ``jwks`` kept from before); ``ReportInvalid`` if its signature is wrong."""
        report = self.attestation(rack_id)
        keys = jwks if jwks is not None else self.verifier_keys()
        return verify_report(report.jws, msgspec.to_builtins(keys))


class Keys:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, limit: int = 20, after: str | None = None,
             org_id: str | None = None) -> ApiKeyList:
        return self._client.run(calls.keys_list(org_id or self._client.org_id(), limit=limit,
                                                after=after))

    def iterate(self, *, org_id: str | None = None) -> Iterator[ApiKey]:
        after = None
        while True:
            page = self.list(limit=100, after=after, org_id=org_id)
            yield from page.data
            if not page.has_more:
                return
            after = page.last_id

    def create(self, name: str, *, scopes: builtins.list[str] | None = None, mode: str = "live",
               role: str = "member", expires_at: int | None = None,
               requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
               org_id: str | None = None) -> CreatedApiKey:
        return self._client.run(calls.keys_create(
            org_id or self._client.org_id(), name, scopes=scopes, mode=mode, role=role,
            expires_at=expires_at, requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute))

    def get(self, key_id: str, *, org_id: str | None = None) -> ApiKey:
        return self._client.run(calls.keys_get(org_id or self._client.org_id(), key_id))

    def revoke(self, key_id: str, *, org_id: str | None = None) -> ApiKey:
        return self._client.run(calls.keys_revoke(org_id or self._client.org_id(), key_id))


class Audit:
    def __init__(self, client: Client) -> None:
        self._client = client

    def events(self, *, tree_size: int | None = None, org_id: str | None = None,
               **filters: str | int | None) -> Iterator[tuple[int, AuditRecord]]:
        """Every event of the org in log order (``filters``: since, until, method,
        route, status, request_id, auth_id): (the tree size the proofs refer to, event)."""
        after: int | None = None
        while True:
            page = self._client.run(calls.audit_events(
                org_id or self._client.org_id(), after=after, tree_size=tree_size, filters=filters))
            tree_size = page.tree_size
            for record in page.data:
                yield page.tree_size, record
            if not page.has_more or page.last_seq is None:
                return
            after = page.last_seq

    def checkpoint(self) -> Checkpoint:
        return self._client.run(calls.audit_checkpoint())

    def consistency(self, first: int, second: int) -> ConsistencyProof:
        return self._client.run(calls.audit_consistency(first, second))


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> ModelList:
        return self._client.run(calls.models_list())

    def get(self, model_id: str) -> Model:
        return self._client.run(calls.models_get(model_id))

    def delete(self, model_id: str) -> ModelDeleted:
        """A fine-tuned model of your org, for good (a job's model takes its
        checkpoints along)."""
        return self._client.run(calls.models_delete(model_id))


class AsyncClient(_Base):
    """The same calls as ``Client``, awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 2,
                 credentials_file: Path | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries,
                         credentials_file=credentials_file)
        self._http = http or httpx.AsyncClient()
        self.keys = AsyncKeys(self)
        self.audit = AsyncAudit(self)
        self.models = AsyncModels(self)
        self.forge = AsyncForge(self)
        self.vault = AsyncVault(self)
        self.files = AsyncFiles(self)
        self.fine_tuning = AsyncFineTuning(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def run(self, call: calls.Call[T]) -> T:
        refreshed = False
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                if self._tokens is not None and call.authenticated and not self._tokens.fresh():
                    await self._refresh()
                response = await self._http.request(**self._request_args(call))
                return _decode(call, response)
            except APIStatusError as error:
                if self._should_refresh(call, error) and not refreshed:
                    await self._refresh()
                    refreshed = True
                    continue
                if (error.status not in RETRY_STATUSES or attempt >= self.max_retries
                        or not call.retry):
                    raise
            except httpx.HTTPError as exc:
                if attempt >= self.max_retries or not call.retry:
                    raise APIConnectionError(f"{self.base_url}: {type(exc).__name__}") from exc
            await asyncio.sleep(_retry_wait(response, attempt))
            attempt += 1

    async def _refresh(self) -> None:
        assert self._tokens is not None
        call = calls.refresh(self._tokens.client_id, self._tokens.refresh_token)
        self._refreshed(_decode(call, await self._http.request(**self._request_args(call))))

    async def org_id(self) -> str:
        if self._org_id is None:
            self._org_id = (await self.me()).org_id
        return self._org_id

    async def me(self) -> Me:
        return await self.run(calls.me())

    async def usage(self, *, start: str | int | None = None, end: str | int | None = None,
                    group_by: list[str] | None = None) -> UsageReport:
        return await self.run(calls.usage(start, end, group_by))


class AsyncForge:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def availability(self, *, metro: str | None = None, tier: str | None = None,
                           gpu_model: str | None = None) -> Availability:
        return await self._client.run(calls.forge_availability(metro, tier, gpu_model))

    async def create(self, gpu_model: str, gpu_count: int, metro: str, *,
                     tier: str | None = None, duration_s: int | None = None,
                     ends_at: int | None = None, starts_at: int | None = None,
                     egress_cidrs: builtins.list[str] | None = None) -> Lease:
        return await self._client.run(calls.forge_lease_create(
            gpu_model, gpu_count, metro, tier=tier, duration_s=duration_s, ends_at=ends_at,
            starts_at=starts_at, egress_cidrs=egress_cidrs))

    async def list(self, *, limit: int = 20, after: str | None = None,
                   state: str | None = None) -> LeaseList:
        return await self._client.run(calls.forge_lease_list(limit=limit, after=after,
                                                             state=state))

    async def get(self, lease_id: str) -> Lease:
        return await self._client.run(calls.forge_lease_get(lease_id))

    async def terminate(self, lease_id: str) -> Lease:
        return await self._client.run(calls.forge_lease_terminate(lease_id))

    async def kubeconfig(self, lease_id: str, *, ttl_s: int | None = None) -> Kubeconfig:
        return await self._client.run(calls.forge_kubeconfig(lease_id, ttl_s))

    async def revoke_kubeconfig(self, lease_id: str, kubeconfig_id: str) -> Lease:
        return await self._client.run(calls.forge_kubeconfig_revoke(lease_id, kubeconfig_id))


class AsyncVault:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def reserve(self, metro: str, *, tier: str | None = None,
                      gpu_model: str | None = None, nodes: int | None = None,
                      talos_version: str | None = None) -> Rack:
        return await self._client.run(calls.vault_rack_reserve(
            metro, tier=tier, gpu_model=gpu_model, nodes=nodes, talos_version=talos_version))

    async def list(self, *, limit: int = 20, after: str | None = None,
                   state: str | None = None) -> RackList:
        return await self._client.run(calls.vault_rack_list(limit=limit, after=after,
                                                            state=state))

    async def get(self, rack_id: str) -> Rack:
        return await self._client.run(calls.vault_rack_get(rack_id))

    async def release(self, rack_id: str) -> Rack:
        return await self._client.run(calls.vault_rack_release(rack_id))

    async def attestation(self, rack_id: str) -> AttestationReport:
        return await self._client.run(calls.vault_attestation(rack_id))

    async def verifier_keys(self) -> Jwks:
        return await self._client.run(calls.vault_verifier_keys())

    async def talos_config(self, rack_id: str, *, node: str | None = None) -> TalosConfig:
        return await self._client.run(calls.vault_talos_config(rack_id, node))

    async def redfish_credential(self, rack_id: str, *, ttl_s: int | None = None
                                 ) -> RedfishCredential:
        return await self._client.run(calls.vault_redfish_credential(rack_id, ttl_s))

    async def revoke_redfish_credential(self, rack_id: str, credential_id: str) -> Rack:
        return await self._client.run(calls.vault_redfish_credential_revoke(rack_id,
                                                                            credential_id))

    async def talos_files(self, rack_id: str, *, node: str | None = None,
                          format: str = "tar") -> bytes:
        return await self._client.run(calls.vault_talos_files(rack_id, node, format))

    async def verified_attestation(self, rack_id: str, jwks: Jwks | None = None
                                   ) -> dict[str, Any]:
        report = await self.attestation(rack_id)
        keys = jwks if jwks is not None else await self.verifier_keys()
        return verify_report(report.jws, msgspec.to_builtins(keys))


class AsyncKeys:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, limit: int = 20, after: str | None = None,
                   org_id: str | None = None) -> ApiKeyList:
        return await self._client.run(calls.keys_list(
            org_id or await self._client.org_id(), limit=limit, after=after))

    async def iterate(self, *, org_id: str | None = None) -> AsyncIterator[ApiKey]:
        after = None
        while True:
            page = await self.list(limit=100, after=after, org_id=org_id)
            for key in page.data:
                yield key
            if not page.has_more:
                return
            after = page.last_id

    async def create(self, name: str, *, scopes: builtins.list[str] | None = None,
                     mode: str = "live", role: str = "member", expires_at: int | None = None,
                     requests_per_minute: int | None = None,
                     tokens_per_minute: int | None = None,
                     org_id: str | None = None) -> CreatedApiKey:
        return await self._client.run(calls.keys_create(
            org_id or await self._client.org_id(), name, scopes=scopes, mode=mode, role=role,
            expires_at=expires_at, requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute))

    async def get(self, key_id: str, *, org_id: str | None = None) -> ApiKey:
        return await self._client.run(calls.keys_get(org_id or await self._client.org_id(),
                                                     key_id))

    async def revoke(self, key_id: str, *, org_id: str | None = None) -> ApiKey:
        return await self._client.run(calls.keys_revoke(org_id or await self._client.org_id(),
                                                        key_id))


class AsyncAudit:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def events(self, *, tree_size: int | None = None, org_id: str | None = None,
                     **filters: str | int | None) -> AsyncIterator[tuple[int, AuditRecord]]:
        after: int | None = None
        org = org_id or await self._client.org_id()
        while True:
            page = await self._client.run(calls.audit_events(org, after=after,
                                                             tree_size=tree_size, filters=filters))
            tree_size = page.tree_size
            for record in page.data:
                yield page.tree_size, record
            if not page.has_more or page.last_seq is None:
                return
            after = page.last_seq

    async def checkpoint(self) -> Checkpoint:
        return await self._client.run(calls.audit_checkpoint())

    async def consistency(self, first: int, second: int) -> ConsistencyProof:
        return await self._client.run(calls.audit_consistency(first, second))


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> ModelList:
        return await self._client.run(calls.models_list())

    async def get(self, model_id: str) -> Model:
        return await self._client.run(calls.models_get(model_id))

    async def delete(self, model_id: str) -> ModelDeleted:
        return await self._client.run(calls.models_delete(model_id))


class Files:
    """Training files: ``volt.files.upload(Path("train.jsonl"), metro="fra")``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(self, path: Path, *, metro: str | None = None) -> FileObject:
        return self._client.run(calls.file_upload(path.name, path.read_bytes(), metro))

    def list(self, *, limit: int = 20, after: str | None = None) -> FileList:
        return self._client.run(calls.file_list(limit, after))

    def get(self, file_id: str) -> FileObject:
        return self._client.run(calls.file_get(file_id))

    def content(self, file_id: str) -> bytes:
        return self._client.run(calls.file_content(file_id))

    def delete(self, file_id: str) -> FileDeleted:
        return self._client.run(calls.file_delete(file_id))


class FineTuning:
    """LoRA fine-tuning: ``volt.fine_tuning.create("volt-tiny", file.id, n_epochs=3)``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, model: str, training_file: str, *, validation_file: str | None = None,
               suffix: str | None = None, seed: int | None = None,
               n_epochs: int | None = None, batch_size: int | None = None,
               learning_rate_multiplier: float | None = None, lora_rank: int | None = None,
               lora_alpha: int | None = None) -> FineTuningJob:
        return self._client.run(calls.job_create(
            model, training_file, validation_file=validation_file, suffix=suffix, seed=seed,
            n_epochs=n_epochs, batch_size=batch_size,
            learning_rate_multiplier=learning_rate_multiplier, lora_rank=lora_rank,
            lora_alpha=lora_alpha))

    def list(self, *, limit: int = 20, after: str | None = None) -> FineTuningJobList:
        return self._client.run(calls.job_list(limit, after))

    def get(self, job_id: str) -> FineTuningJob:
        return self._client.run(calls.job_get(job_id))

    def cancel(self, job_id: str) -> FineTuningJob:
        return self._client.run(calls.job_cancel(job_id))

    def events(self, job_id: str, *, limit: int = 20,
               after: str | None = None) -> FineTuningJobEventList:
        return self._client.run(calls.job_events(job_id, limit, after))

    def checkpoints(self, job_id: str) -> FineTuningJobCheckpointList:
        return self._client.run(calls.job_checkpoints(job_id))


class AsyncFiles:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def upload(self, path: Path, *, metro: str | None = None) -> FileObject:
        data = await asyncio.to_thread(path.read_bytes)
        return await self._client.run(calls.file_upload(path.name, data, metro))

    async def list(self, *, limit: int = 20, after: str | None = None) -> FileList:
        return await self._client.run(calls.file_list(limit, after))

    async def get(self, file_id: str) -> FileObject:
        return await self._client.run(calls.file_get(file_id))

    async def content(self, file_id: str) -> bytes:
        return await self._client.run(calls.file_content(file_id))

    async def delete(self, file_id: str) -> FileDeleted:
        return await self._client.run(calls.file_delete(file_id))


class AsyncFineTuning:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, model: str, training_file: str, *,
                     validation_file: str | None = None, suffix: str | None = None,
                     seed: int | None = None, n_epochs: int | None = None,
                     batch_size: int | None = None,
                     learning_rate_multiplier: float | None = None,
                     lora_rank: int | None = None, lora_alpha: int | None = None
                     ) -> FineTuningJob:
        return await self._client.run(calls.job_create(
            model, training_file, validation_file=validation_file, suffix=suffix, seed=seed,
            n_epochs=n_epochs, batch_size=batch_size,
            learning_rate_multiplier=learning_rate_multiplier, lora_rank=lora_rank,
            lora_alpha=lora_alpha))

    async def list(self, *, limit: int = 20, after: str | None = None) -> FineTuningJobList:
        return await self._client.run(calls.job_list(limit, after))

    async def get(self, job_id: str) -> FineTuningJob:
        return await self._client.run(calls.job_get(job_id))

    async def cancel(self, job_id: str) -> FineTuningJob:
        return await self._client.run(calls.job_cancel(job_id))

    async def events(self, job_id: str, *, limit: int = 20,
                     after: str | None = None) -> FineTuningJobEventList:
        return await self._client.run(calls.job_events(job_id, limit, after))

    async def checkpoints(self, job_id: str) -> FineTuningJobCheckpointList:
        return await self._client.run(calls.job_checkpoints(job_id))
