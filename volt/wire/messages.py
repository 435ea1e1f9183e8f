"""Every message exchanged between Volt processes, as msgspec Structs.

All messages are tagged (``kind``) so one decoder per subject family can tell
them apart, and carry a schema version ``v``. Rules for evolving them
(msgspec's schema-evolution rules): new fields always get defaults, fields are
never removed or retyped, and a change receivers cannot ignore bumps ``v``.
Receivers drop messages whose ``v`` they do not know (see ``codec``).

Payload-carrying messages (``InferenceRequest``, ``StreamChunk``, ``EmbeddingChunk``,
``Final``) only ever travel on metro-local subjects.
"""

from __future__ import annotations

from typing import Literal

import msgspec

WIRE_VERSION = 1
"""The schema version this build writes and the only one it reads."""


class WireMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    v: int = WIRE_VERSION


# --- node family: agent -> scheduler (global, metadata only) -------------------


class GpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One GPU as NVML reads it (``volt/agent/telemetry.py``); fields a GPU
    does not report keep their defaults and are named in ``not_supported``."""

    index: int
    name: str
    uuid: str
    memory_total_mib: int
    memory_used_mib: int = 0
    utilization_pct: int = 0
    temperature_c: int = 0
    serial: str = ""
    power_w: float = 0.0
    power_limit_w: float = 0.0
    energy_j: int = 0
    """Since the driver loaded."""
    sm_clock_mhz: int = 0
    memory_clock_mhz: int = 0
    throttle_reasons: list[str] = []
    """NVML's clock event reasons (``sw_power_cap``, ``hw_thermal``, ...)."""
    ecc_enabled: bool = False
    ecc_corrected_volatile: int = 0
    ecc_uncorrected_volatile: int = 0
    ecc_uncorrected_aggregate: int = 0
    remapped_rows_correctable: int = 0
    remapped_rows_uncorrectable: int = 0
    remapped_rows_pending: bool = False
    remapped_rows_failure: bool = False
    retired_pages_pending: bool = False
    pcie_generation: int = 0
    pcie_width: int = 0
    pcie_replays: int = 0
    mig_enabled: bool = False
    nvlink_up: int = 0
    nvlink_links: int = 0
    xids: list[int] = []
    """XID errors seen since the agent started."""
    not_supported: list[str] = []


class EngineLoad(msgspec.Struct, frozen=True, kw_only=True):
    """The engine's load, read from its Prometheus metrics (vLLM's names)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    """Fraction of the KV cache in use, 0.0 to 1.0 (``vllm:kv_cache_usage_perc``)."""


class NodeHello(WireMessage, frozen=True, kw_only=True, tag="node.hello"):
    node_id: str
    metro: str
    tier: str
    models: list[str]
    gpus: list[GpuInfo] = []
    engine: str = "cpu"
    agent_version: str = ""
    heartbeat_interval_s: float = 2.0
    capacity: str = "live"
    """``test``: serves only test keys (``volt_sk_test_``)."""
    rack: str = ""
    nvlink_domain: str = ""


class TrainStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A fine-tune job as the agent running it sees it (in every heartbeat, so
    a restarted scheduler learns each job's fate from the next one)."""

    job_id: str
    state: Literal["running", "succeeded", "failed", "cancelled"]
    step: int = 0
    total_steps: int = 0
    trained_tokens: int = 0
    error: str = ""
    checkpoints: list[int] = []
    """The steps whose checkpoint is kept (the last epochs')."""


class Heartbeat(WireMessage, frozen=True, kw_only=True, tag="node.heartbeat"):
    node_id: str
    metro: str
    tier: str
    models: list[str]
    gpus: list[GpuInfo] = []
    load: EngineLoad = EngineLoad()
    engine_ready: bool = True
    heartbeat_interval_s: float = 2.0
    seq: int = 0
    inflight_by_replica: dict[str, int] = {}
    """Requests in flight per API replica when ``load`` was read: each replica
    subtracts its own share and adds what it has in flight now."""
    capacity: str = "live"
    seal: str = ""
    """``sealed``, ``insecure`` (the development flag) or ``broken``; empty from
    agents that predate the seal (treated as broken)."""
    seal_problem: str = ""
    rack: str = ""
    nvlink_domain: str = ""
    lease_id: str = ""
    """The Forge lease this node has handed its GPUs to (its engines stopped);
    empty: it serves Spark."""
    training: list[TrainStatus] = []
    """The fine-tune jobs this agent ran since it started (the recent ones)."""
    adapters: list[str] = []
    """The tuned models (LoRA adapters) its engines have loaded now."""
    trains: list[str] = []
    """The base models this agent can fine-tune (it has their weights)."""


class TrainProgress(WireMessage, frozen=True, kw_only=True, tag="node.training"):
    """A running job's progress: one of its events (metadata only: numbers)."""

    node_id: str
    job_id: str
    event: Literal["start", "step", "checkpoint"]
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    trained_tokens: int = 0
    at: float = 0.0


class NodeGoodbye(WireMessage, frozen=True, kw_only=True, tag="node.goodbye"):
    """Sent by an agent that stops on purpose, so it leaves placement at once."""

    node_id: str


NodeMessage = NodeHello | Heartbeat | NodeGoodbye | TrainProgress


# --- scheduler family (global, metadata only) ----------------------------------


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    created: int
    owned_by: str = "volt"
    org_id: str = ""
    """A tuned model: only this org sees and calls it (empty: a base model)."""
    base: str = ""
    """A tuned model's base model: the engines that serve it load its adapter."""
    metro: str = ""
    """A tuned model's metro: its adapter (trained on the org's data) stays there."""


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    metro: str
    tier: str
    models: list[str]
    state: str
    load: EngineLoad = EngineLoad()
    inflight_by_replica: dict[str, int] = {}
    capacity: str = "live"
    problems: list[str] = []
    """Why the node is unhealthy (its state says ``unhealthy``)."""
    seal: str = ""
    attestation: str = ""
    """``attested``, ``not_attested`` (no TPM, allowed for development) or ``failed``."""
    lease_id: str = ""
    """The Forge lease the node is given to: it takes no Spark request."""
    adapters: list[str] = []
    """Tuned models loaded on the node: their requests go there first."""


class PlacementView(WireMessage, frozen=True, kw_only=True, tag="sched.view"):
    """The scheduler's live view: every known node and the model catalog."""

    scheduler_id: str
    seq: int
    nodes: list[NodeView]
    models: list[ModelCard]
    metros: list[str] = []
    """Every metro the fleet serves (configured, or reported by a node since the
    scheduler started), with or without a node up now."""
    tiers: list[str] = []


class ViewQuery(WireMessage, frozen=True, kw_only=True, tag="sched.view.get"):
    pass


class PlaceQuery(WireMessage, frozen=True, kw_only=True, tag="sched.place"):
    model: str
    metros: list[str] | None = None
    tier: str | None = None


class PlaceAnswer(WireMessage, frozen=True, kw_only=True, tag="sched.place.answer"):
    node_id: str | None
    metro: str | None = None
    rejected: dict[str, str] = {}
    """Why each node that was not chosen was filtered out (node id -> reason)."""


class NodeAssignment(WireMessage, frozen=True, kw_only=True, tag="sched.assign"):
    """The scheduler to one node: hand your GPUs to this lease (stop your
    engines), or with an empty ``lease_id``, take them back for Spark. Sent
    until the node's heartbeats say it has done so."""

    node_id: str
    lease_id: str = ""


class TrainStart(WireMessage, frozen=True, kw_only=True, tag="sched.train.start"):
    """The scheduler to one node: train this job (repeated until the node's
    heartbeat names it). Carries no data: the agent reads the training file
    from its metro's blob store."""

    node_id: str
    job_id: str
    org_id: str
    model: str
    """The base model (the agent's engine serves it)."""
    training_file: str
    validation_file: str | None = None
    n_epochs: int
    batch_size: int
    learning_rate: float
    lora_rank: int
    lora_alpha: int
    seed: int
    checkpoints: list[int] = []
    """A job started again after its node was lost: the steps of its kept
    checkpoints (blobs), oldest first. It goes on from the last one, and these
    count among the checkpoints it keeps."""


class TrainCancel(WireMessage, frozen=True, kw_only=True, tag="sched.train.cancel"):
    node_id: str
    job_id: str


class AdapterDrop(WireMessage, frozen=True, kw_only=True, tag="sched.adapter.drop"):
    """These tuned models were deleted: unload them and delete their adapters'
    files on this node (sent to every node of the model's metro)."""

    node_id: str
    models: list[str]


SchedulerMessage = (PlacementView | ViewQuery | PlaceQuery | PlaceAnswer | NodeAssignment
                    | TrainStart | TrainCancel | AdapterDrop)


# --- inference family: API <-> agent (metro-local, carries payloads) ------------


class InferenceRequest(WireMessage, frozen=True, kw_only=True, tag="infer.request"):
    request_id: str
    endpoint: Literal["chat.completions", "completions", "embeddings"] = "chat.completions"
    model: str
    stream: bool
    body: bytes
    """The OpenAI request as JSON, ready for the engine (Volt extensions removed)."""
    deadline_unix: float
    """Wall-clock time after which the agent abandons the request."""
    tenant_id: str = ""
    """The org the request is for (named ``tenant_id`` since v1)."""
    key_id: str = ""
    """Who the request is for, so the pod's usage record can be billed."""
    spiffe_id: str = ""
    """The caller's SPIFFE ID (``spiffe://<td>/org/<org>/key/<key>``)."""
    livemode: bool = True
    """False for a ``volt_sk_test_`` key: the pod records its usage as not billable."""


class Cancel(WireMessage, frozen=True, kw_only=True, tag="infer.cancel"):
    request_id: str


class ChoiceDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    index: int = 0
    content: str = ""
    finish_reason: str | None = None
    logprobs: bytes = b""
    """When asked for: the tokens' log-probabilities, a JSON array in OpenAI's shape
    (``choices[].logprobs.content``), passed through from the engine as is."""


class StreamChunk(WireMessage, frozen=True, kw_only=True, tag="infer.chunk"):
    """One or more tokens, coalesced when the engine produced them together."""

    request_id: str
    seq: int
    choices: list[ChoiceDelta]


class EmbeddingChunk(WireMessage, frozen=True, kw_only=True, tag="infer.embeddings"):
    """Some of an embeddings request's vectors, in input order from ``first_index``;
    ``Final`` (with the token count) follows the last part."""

    request_id: str
    seq: int
    first_index: int
    vectors: list[bytes]
    """Each vector as little-endian float32s (OpenAI's base64 payload, unencoded)."""


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class AgentTiming(msgspec.Struct, frozen=True, kw_only=True):
    queue_ms: float = 0.0
    """From the agent receiving the request to handing it to the engine."""
    engine_ttft_ms: float = 0.0
    engine_total_ms: float = 0.0


class Final(WireMessage, frozen=True, kw_only=True, tag="infer.final"):
    """The last message of a request. For non-streaming requests ``choices`` holds
    the whole completion; for streams, the deltas not yet sent in a chunk (when
    the engine finished in the same instant it produced them)."""

    request_id: str
    pod: str
    metro: str
    tier: str
    choices: list[ChoiceDelta] = []
    usage: Usage = Usage()
    timing: AgentTiming = AgentTiming()
    seal: str = ""
    """The pod's seal (``sealed`` or ``insecure``), for the response's ``volt`` block."""
    attestation: str = ""
    """``attested`` or ``not_attested``, for the response's ``volt`` block."""


class InferenceError(WireMessage, frozen=True, kw_only=True, tag="infer.error"):
    request_id: str
    code: str
    message: str
    status: int = 500
    """The HTTP status the API answers with (the engine's, for a rejected request)."""
    retryable: bool = False
    """True when nothing was generated and another pod may serve the request."""


InferenceMessage = InferenceRequest | Cancel
ReplyMessage = StreamChunk | EmbeddingChunk | Final | InferenceError


class ReplyBatch(WireMessage, frozen=True, kw_only=True, tag="infer.batch"):
    """Replies to several requests of one API replica that a pod produced within
    one stream interval, in one bus message (``subjects.batch_reply``): a busy pod
    sends one message per tick per replica instead of one per token per stream.
    Each reply names its request; they are in the order they were produced."""

    replies: list[StreamChunk | EmbeddingChunk | Final | InferenceError]


BatchedReplyMessage = ReplyMessage | ReplyBatch


# --- usage family: agent -> JetStream -> scheduler (global, counts only) --------


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What one request cost, from the pod that served it. Never any payload.

    ``status`` is ``completed``, ``cancelled`` (the client went away; the
    tokens generated until then count) or ``failed`` (the pod could not finish;
    such attempts are not billed).
    """

    request_id: str
    tenant_id: str
    """The org (named ``tenant_id`` since v1)."""
    key_id: str
    model: str
    endpoint: str
    metro: str
    tier: str
    pod: str
    stream: bool
    status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    started_unix: float
    ended_unix: float
    spiffe_id: str = ""
    livemode: bool = True


class UsageBatch(WireMessage, frozen=True, kw_only=True, tag="usage.batch"):
    """Usage records from one pod, batched when requests end together.

    There is no dedup id: the store keys records by request id, so a batch
    delivered twice is stored once."""

    records: list[UsageRecord]


UsageMessage = UsageBatch


# --- identity family (global, metadata only) -----------------------------------


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One request to the API, allowed or denied: who, what, when, how it ended.

    Never a body, a prompt or a secret: at most the body's SHA-256. Its msgpack
    encoding is the leaf of the audit log's Merkle tree; the log keeps those
    exact bytes and verifiers hash them, never a re-encoding (a newer release
    may add fields). Times are integer milliseconds: no floats in a hashed leaf.
    """

    event_id: str
    time_ms: int
    request_id: str
    spiffe_id: str
    """Empty when the caller could not be authenticated."""
    org_id: str
    auth_method: str
    """``api_key``, ``device_token``, ``oidc_session``, or empty."""
    auth_id: str
    """The key id, the OAuth client id or the user id."""
    method: str
    route: str
    """The route template (``/v1/orgs/{org_id}/api-keys``), not the raw path."""
    resources: dict[str, str] = {}
    """The route's path parameters (resource ids)."""
    status: int
    client: str = ""
    body_sha256: str = ""
    level: str = "metadata"


class AuditBatch(WireMessage, frozen=True, kw_only=True, tag="audit.batch"):
    events: list[AuditEvent]


class CredentialRevoked(WireMessage, frozen=True, kw_only=True, tag="identity.revoked"):
    """An API key or a refresh-token family was revoked: every API replica
    forgets it at once instead of at its cache's expiry."""

    key_id: str = ""
    family_id: str = ""
    expires_unix: float = 0.0
    """For a family: when its last access token expires (the replica forgets it then)."""


IdentityMessage = AuditBatch | CredentialRevoked


# --- attestation family: agent <-> scheduler (global, metadata only) -----------


class AttestEnroll(WireMessage, frozen=True, kw_only=True, tag="attest.enroll"):
    """A node presents its TPM: the EK (and its certificate) and the attestation key."""

    node_id: str
    ek_public: bytes
    """``TPM2B_PUBLIC`` of the endorsement key."""
    ek_certificate: bytes
    """DER, from the TPM's NV (index 0x01c00002)."""
    ak_public: bytes


class EnrollChallenge(WireMessage, frozen=True, kw_only=True, tag="attest.enroll.challenge"):
    """MakeCredential's output: only the node's TPM can recover the secret."""

    credential_blob: bytes
    secret: bytes
    refused: str = ""
    """Set instead when enrolment is refused outright (bad EK certificate, not an AK)."""


class EnrollProof(WireMessage, frozen=True, kw_only=True, tag="attest.enroll.proof"):
    node_id: str
    credential: bytes


class NonceRequest(WireMessage, frozen=True, kw_only=True, tag="attest.nonce.get"):
    node_id: str


class NonceAnswer(WireMessage, frozen=True, kw_only=True, tag="attest.nonce"):
    nonce: bytes
    expect_new_boot: bool = False


class AttestEvidence(WireMessage, frozen=True, kw_only=True, tag="attest.evidence"):
    """A quote over the node's PCRs with the verifier's nonce, and the event log."""

    node_id: str
    attest: bytes
    signature: bytes
    pcrs: dict[int, bytes]
    event_log: bytes
    svid_key: bytes = b""
    """An enrolling node's request for its bus SVID: the public key (DER
    SubjectPublicKeyInfo) the quote vouches for (``verifier.binding``)."""
    nonce: bytes = b""
    """With ``svid_key``: the nonce the binding was made with."""


class AttestResult(WireMessage, frozen=True, kw_only=True, tag="attest.result"):
    """The scheduler's answer to enrolment or evidence: passed, and why not."""

    passed: bool
    reasons: list[str] = []
    verdict: bytes = b""
    """For evidence: the signed verdict (JSON)."""
    svid: bytes = b""
    """For evidence with ``svid_key`` that passed: the node's X.509-SVID (PEM)."""
    bundle: bytes = b""
    """...and the workload CA's certificates that verify the bus."""


AttestMessage = (AttestEnroll | EnrollChallenge | EnrollProof | NonceRequest | NonceAnswer
                 | AttestEvidence | AttestResult)


# --- forge family: API <-> scheduler, request/reply (global, metadata only) -----
#
# The API asks, the scheduler (the single writer of leases) decides and
# answers. Only ``KubeconfigMinted`` carries a secret (the bound token): it
# travels as the reply, on the asking replica's own inbox, never on a shared
# subject.


class LeaseCreate(WireMessage, frozen=True, kw_only=True, tag="forge.lease.create"):
    org_id: str
    created_by: str = ""
    gpu_model: str
    gpu_count: int
    metro: str
    tier: str | None = None
    starts_at: float | None = None
    """Unix seconds; None: now."""
    ends_at: float
    egress_cidrs: list[str] = []


class LeaseTerminate(WireMessage, frozen=True, kw_only=True, tag="forge.lease.terminate"):
    org_id: str
    lease_id: str


class KubeconfigMint(WireMessage, frozen=True, kw_only=True, tag="forge.kubeconfig.mint"):
    org_id: str
    lease_id: str
    ttl_s: int | None = None


class KubeconfigRevoke(WireMessage, frozen=True, kw_only=True, tag="forge.kubeconfig.revoke"):
    org_id: str
    lease_id: str
    kubeconfig_id: str


class AvailabilityQuery(WireMessage, frozen=True, kw_only=True, tag="forge.availability.get"):
    metro: str | None = None
    tier: str | None = None
    gpu_model: str | None = None


class LeaseChanged(WireMessage, frozen=True, kw_only=True, tag="forge.lease"):
    """The command was applied; the lease as stored is the answer."""

    lease_id: str
    state: str


class KubeconfigMinted(WireMessage, frozen=True, kw_only=True, tag="forge.kubeconfig"):
    kubeconfig_id: str
    lease_id: str
    token: str
    expires_at: float
    server: str
    ca_pem: str
    namespace: str


class GpuAvailability(msgspec.Struct, frozen=True, kw_only=True):
    metro: str
    tier: str
    gpu_model: str
    total: int
    free: int
    largest_on_node: int
    largest_in_nvlink_domain: int
    largest_in_rack: int
    price_per_gpu_hour: float | None = None


class AvailabilityAnswer(WireMessage, frozen=True, kw_only=True, tag="forge.availability"):
    rows: list[GpuAvailability]


class ForgeRefused(WireMessage, frozen=True, kw_only=True, tag="forge.refused"):
    """The command was not applied: ``code`` and ``status`` say why and how the
    API answers (404 not found, 409 wrong state, 400 bad shape, 403 quota,
    503 no capacity now)."""

    code: str
    message: str
    status: int
    param: str | None = None


ForgeMessage = (LeaseCreate | LeaseTerminate | KubeconfigMint | KubeconfigRevoke
                | AvailabilityQuery | LeaseChanged | KubeconfigMinted | AvailabilityAnswer
                | ForgeRefused)


# --- vault family: API <-> scheduler, request/reply (global, metadata only) -----
#
# The scheduler is the single writer of racks; the API asks. No BMC credential
# ever crosses the bus: the scheduler alone opens them to drive the BMCs.


class RackReserve(WireMessage, frozen=True, kw_only=True, tag="vault.rack.reserve"):
    org_id: str
    created_by: str = ""
    metro: str
    tier: str | None = None
    gpu_model: str | None = None
    nodes: int | None = None
    """At least this many nodes; None: any rack."""
    talos_version: str | None = None


class RackRelease(WireMessage, frozen=True, kw_only=True, tag="vault.rack.release"):
    org_id: str
    rack_id: str


class RackChanged(WireMessage, frozen=True, kw_only=True, tag="vault.rack"):
    """The command was applied; the rack as stored is the answer."""

    rack_id: str
    state: str


class AttestationReportQuery(WireMessage, frozen=True, kw_only=True,
                             tag="vault.attestation.get"):
    org_id: str
    rack_id: str


class AttestationReportAnswer(WireMessage, frozen=True, kw_only=True, tag="vault.attestation"):
    jws: str
    """The report, signed by the verifier's key (``volt/vault/report.py``)."""


class VerifierKeysQuery(WireMessage, frozen=True, kw_only=True, tag="vault.verifier_keys.get"):
    pass


class VerifierKeysAnswer(WireMessage, frozen=True, kw_only=True, tag="vault.verifier_keys"):
    jwks: bytes
    """The verifier's public keys as a JWKS (JSON)."""


class TalosConfigQuery(WireMessage, frozen=True, kw_only=True, tag="vault.talos.get"):
    org_id: str
    rack_id: str


class TalosNode(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    control_plane: bool
    install_disk: str


class TalosConfigAnswer(WireMessage, frozen=True, kw_only=True, tag="vault.talos"):
    """The rack's Talos secrets bundle (a secret: it travels only as the reply,
    on the asking replica's own inbox) and what its configs are made from."""

    secrets: bytes
    """The bundle, as ``talosctl gen secrets`` writes it (YAML)."""
    talos_version: str
    cluster_name: str
    endpoint: str
    nodes: list[TalosNode]


class RedfishCredentialMint(WireMessage, frozen=True, kw_only=True,
                            tag="vault.redfish_credential.mint"):
    org_id: str
    rack_id: str
    ttl_s: int | None = None
    created_by: str = ""


class RedfishCredentialMinted(WireMessage, frozen=True, kw_only=True,
                              tag="vault.redfish_credential"):
    """The only time the password exists outside the tenant: the reply, on the
    asking replica's own inbox."""

    credential_id: str
    rack_id: str
    username: str
    password: str
    expires_at: float


class RedfishCredentialRevoke(WireMessage, frozen=True, kw_only=True,
                              tag="vault.redfish_credential.revoke"):
    org_id: str
    rack_id: str
    credential_id: str


class VaultRefused(WireMessage, frozen=True, kw_only=True, tag="vault.refused"):
    """The command was not applied: ``code`` and ``status`` say why (404 not
    found, 409 wrong state, 400 bad shape, 503 no rack free now)."""

    code: str
    message: str
    status: int
    param: str | None = None


VaultMessage = (RackReserve | RackRelease | RackChanged | AttestationReportQuery
                | AttestationReportAnswer | VerifierKeysQuery | VerifierKeysAnswer
                | TalosConfigQuery | TalosConfigAnswer | RedfishCredentialMint
                | RedfishCredentialMinted | RedfishCredentialRevoke | VaultRefused)


# --- fine-tuning family: API <-> scheduler, request/reply (global, metadata only) --
#
# The scheduler is the single writer of files' records and jobs; the API stores
# a file's bytes in its metro's blob store first, then records it here. No
# line of training data ever crosses these subjects.


class FileRecord(WireMessage, frozen=True, kw_only=True, tag="finetune.file.record"):
    org_id: str
    file_id: str
    metro: str
    filename: str
    bytes: int
    purpose: str
    examples: int
    sha256: str
    created_by: str = ""


class FileDelete(WireMessage, frozen=True, kw_only=True, tag="finetune.file.delete"):
    org_id: str
    file_id: str


class FileChanged(WireMessage, frozen=True, kw_only=True, tag="finetune.file"):
    file_id: str
    state: str
    metro: str


class JobCreate(WireMessage, frozen=True, kw_only=True, tag="finetune.job.create"):
    org_id: str
    created_by: str = ""
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str = ""
    seed: int
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    lora_rank: int
    lora_alpha: int


class JobCancel(WireMessage, frozen=True, kw_only=True, tag="finetune.job.cancel"):
    org_id: str
    job_id: str


class JobChanged(WireMessage, frozen=True, kw_only=True, tag="finetune.job"):
    job_id: str
    state: str


class ModelDelete(WireMessage, frozen=True, kw_only=True, tag="finetune.model.delete"):
    """Delete a tuned model: a job's (and with it its checkpoints'), or one checkpoint's."""

    org_id: str
    model_id: str


class ModelsDeleted(WireMessage, frozen=True, kw_only=True, tag="finetune.model.deleted"):
    model_ids: list[str]
    """Every model id that went (the job's model takes its checkpoints along)."""


class FinetuneRefused(WireMessage, frozen=True, kw_only=True, tag="finetune.refused"):
    code: str
    message: str
    status: int
    param: str | None = None


FinetuneMessage = (FileRecord | FileDelete | FileChanged | JobCreate | JobCancel | JobChanged
                   | ModelDelete | ModelsDeleted | FinetuneRefused)
