"""Configuration: one TOML file plus ``VOLT_*`` environment variables.

Every service reads the same ``VoltConfig`` and uses its own section. Values
come from, in increasing priority: defaults, the TOML file (``--config`` or
``VOLT_CONFIG``), environment variables, command-line flags. Environment
variables are named ``VOLT_<SECTION>_<FIELD>`` (``VOLT_API_PORT``,
``VOLT_AGENT_METRO``) or ``VOLT_<FIELD>`` for top-level fields
(``VOLT_DATA_DIR``).

Everything is validated with msgspec at start; a bad value raises
``ConfigError`` naming the field, e.g. ``api.port: Expected int <= 65535``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import socket
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
SubjectToken = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the field."""


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NatsSettings(_Section):
    url: str = ""
    """Where services dial NATS. Empty under ``volt up``, which embeds a server."""
    port: Port = 0
    """Port of the embedded server under ``volt up`` (0: pick a free one)."""
    svid_dir: str = ""
    """This process's bus identity: a folder with ``svid.pem``, ``svid-key.pem`` and
    ``bundle.pem`` (an X.509-SVID from Volt's workload CA, ``volt admin bus``). The
    bus then maps it to this role's least-privilege permissions, and the
    process takes its node or replica name from it. Empty: a plain bus, for
    development only (anyone on it may publish and read everything)."""
    spiffe_socket: str = ""
    """Take the bus identity from the SPIFFE Workload API at this Unix socket
    instead of ``svid_dir``: SPIRE as the issuer (its spire-agent's socket, e.g.
    ``/run/spire/agent/public/api.sock``), which also rotates the SVID. The
    process picks the SVID whose SPIFFE ID names its role (an agent: its node)."""


class StoreSettings(_Section):
    url: str = ""
    """SQLAlchemy URL. Empty: a SQLite file in the data folder.
    PostgreSQL: ``postgresql+asyncpg://user@host/db``."""


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    server: Literal["uvicorn", "hypercorn"] = "uvicorn"
    """The ASGI server for the Quart app. uvicorn by default: it costs ~330 µs
    less CPU per request than Hypercorn here, which is the difference between
    meeting the spine's throughput targets and not (README, "Benchmarks")."""
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """API processes ``volt up`` runs on the one port (each a replica of its own,
    with its own bus identity: the API is stateless). Every ``volt api`` listens
    with SO_REUSEPORT, so the kernel spreads connections over the processes on a
    port; elsewhere run one ``volt api`` per core the same way."""
    request_timeout_s: PositiveFloat = 600.0
    """Every request has a deadline; none hangs longer than this."""
    replica_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")] = ""
    """Names this replica's reply subjects. Empty: a random id per process."""
    auth_cache_s: PositiveFloat = 30.0
    """How long a verified API key is trusted before the store is asked again."""
    routing: Literal["prefix_aware", "least_load", "prefix_only", "round_robin", "random"] = \
        "prefix_aware"
    """How a request picks among the pods that may serve it: ``prefix_aware`` (load,
    plus the pod that probably holds its prompt prefix or session), ``least_load``,
    or the baselines ``volt bench prefix`` compares them with."""
    max_inflight_per_pod: Annotated[int, msgspec.Meta(ge=1)] = 256
    """Requests this replica sends one pod at once; beyond, they queue (fairly)."""
    queue_limit: Annotated[int, msgspec.Meta(ge=0)] = 1024
    """Requests that may wait for a pod, per model; beyond, 429."""
    tenant_queue_limit: Annotated[int, msgspec.Meta(ge=0)] = 256
    """Requests one tenant may have waiting, per model; beyond, 429 for that tenant."""

    def __post_init__(self) -> None:
        _check_tokens(self, ("replica_id",))


class SchedulerSettings(_Section):
    missed_heartbeats: Annotated[int, msgspec.Meta(ge=1)] = 3
    """A node that misses this many heartbeats leaves placement."""
    view_interval_s: PositiveFloat = 1.0
    """How often the placement view is republished when nothing changed."""
    sweep_interval_s: PositiveFloat = 0.1
    allow_unsealed: bool = False
    """Development only: place work on nodes started with ``agent.insecure_unsealed``
    (``volt up`` on a machine that cannot seal). Never in production."""
    metros: list[SubjectToken] = []
    """The metros the fleet serves, beside any a node has reported since the
    scheduler started. A pin to one of them with no pod up is a 503 (retry
    later); a pin to any other metro is a 400 (no retry can succeed)."""
    tiers: list[SubjectToken] = []
    """The same for tiers."""


class ForgeSettings(_Section):
    """Forge: dedicated GPU leases, each scoped into its own Kubernetes namespace."""

    kubeconfig: str = ""
    """The scheduler's kubeconfig for the cluster leases live in (it creates
    namespaces, quotas, policies, RBAC and tokens, and taints nodes). Empty:
    Forge is off (its routes answer 503)."""
    default_gpu_quota: Annotated[int, msgspec.Meta(ge=0)] = 64
    """GPUs an org's leases may hold at once, unless the org has its own."""
    prices: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = {}
    """Price per GPU-hour by GPU model (``H100``) or model and tier
    (``H100/premium``, which wins), shown on ``/v1/forge/availability``."""
    kubeconfig_ttl_s: Annotated[int, msgspec.Meta(ge=600, le=7 * 86400)] = 3600
    """How long a minted kubeconfig's token lasts unless asked otherwise
    (never past its lease's end; Kubernetes' floor is 10 minutes)."""
    max_lease_s: Annotated[float, msgspec.Meta(ge=60)] = 90 * 86400.0
    min_lease_s: Annotated[float, msgspec.Meta(ge=1)] = 600.0
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """How long a node chosen for a lease waits for its Spark requests to end."""
    handover_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    """How long provisioning waits for a node's agent to say its engines have
    stopped (its GPUs free for the tenant) before going on without it."""
    provision_timeout_s: PositiveFloat = 120.0
    """A lease not provisioned by then is rolled back and fails."""
    reconcile_interval_s: PositiveFloat = 1.0


class OidcIssuer(_Section):
    """An OpenID Provider console admins sign in with (``[[identity.oidc]]``)."""

    name: SubjectToken
    """Names the issuer in URLs (``/console/login?issuer=<name>``)."""
    issuer: str
    client_id: str
    client_secret: str = ""
    client_secret_file: str = ""
    """Read the secret from this file instead (keeps it out of the config file)."""
    preset: Literal["generic", "okta", "entra", "google"] = "generic"
    """Provider quirks (``volt/identity/oidc_presets.py``): issuer URL shape,
    the groups claim, scopes."""
    groups_claim: str = ""
    """Empty: the preset's (``groups``; ``hd`` for Google)."""
    scopes: list[str] = []
    """Empty: the preset's (``openid email profile``, plus ``groups`` for generic and Okta)."""
    role_map: dict[str, str] = {}
    """Group -> ``<org name>:<role>`` (role: owner, admin, member, viewer)."""

    def __post_init__(self) -> None:
        from volt.identity.oidc_presets import check_issuer

        check_issuer(self.preset, self.issuer)
        for group, target in self.role_map.items():
            org, _, role = target.rpartition(":")
            if not org or role not in {"owner", "admin", "member", "viewer"}:
                raise ValueError(f"role_map[{group!r}] must be `<org>:<role>`, not {target!r}")


class IdentitySettings(_Section):
    trust_domain: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9._-]{1,255}$")] = "volt.local"
    """SPIFFE trust domain of every principal (``spiffe://<trust_domain>/org/...``)."""
    secrets_dir: str = ""
    """The keyring (``volt/identity/keyring.py``). Empty: ``<data>/secrets``."""
    public_url: str = ""
    """Where users reach the API (verification and callback URLs). Empty:
    ``http://<api.host>:<api.port>``."""
    access_token_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=86400)] = 900
    refresh_token_ttl_s: Annotated[int, msgspec.Meta(ge=300)] = 30 * 24 * 3600
    device_code_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=3600)] = 600
    device_poll_interval_s: Annotated[int, msgspec.Meta(ge=1, le=60)] = 5
    device_clients: list[str] = msgspec.field(default_factory=lambda: ["volt-cli"])
    """OAuth client ids that may use the device grant (public clients)."""
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Default per-key Spark limit when a key sets none (0: no limit)."""
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    oidc: list[OidcIssuer] = []


class AuditSettings(_Section):
    checkpoint_every: Annotated[int, msgspec.Meta(ge=1)] = 1000
    """Sign a checkpoint after this many events..."""
    checkpoint_interval_s: PositiveFloat = 5.0
    """...or this long after the last one, while events arrive."""
    flush_interval_s: PositiveFloat = 0.05
    """How long an API replica holds events before publishing them."""


class AttestationSettings(_Section):
    required: bool = True
    """Place work only on nodes whose latest verdict passed and is fresh. Off
    only for development (``volt up`` without a TPM, tests without one)."""
    policy_file: str = ""
    """The reference policy (JSON, ``volt/attestation/policy.py``). Empty or
    invalid: every node is refused (refuse by default)."""
    ek_ca_file: str = ""
    """PEM bundle of the TPM manufacturers' CAs that EK certificates must chain to."""
    verdict_ttl_s: PositiveFloat = 900.0
    """A verdict older than this no longer counts (agents re-attest well before)."""
    nonce_ttl_s: PositiveFloat = 60.0
    certify_nodes: bool = True
    """Issue an enrolling node (one holding only an ``enrol`` SVID) its bus SVID
    after its first passing verdict, for the key that verdict's quote vouched
    for. The scheduler then holds the workload CA (in the keyring folder) and
    reads the admitted identities from ``<data>/bus``."""
    node_svid_lifetime_s: PositiveFloat = 3600.0
    """How long an attested node's bus SVID lasts. The node renews it with every
    passing attestation (``agent.attestation_interval_s``), so one that stops
    attesting, or fails, cannot reconnect to the bus once it expires."""


class AgentSettings(_Section):
    node_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")] = ""
    """Empty: derived from the host name."""
    metro: SubjectToken = "local"
    tier: SubjectToken = "standard"
    capacity: Literal["live", "test"] = "live"
    """``test``: this node serves only ``volt_sk_test_`` keys (and live keys never reach it)."""
    rack: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] = ""
    nvlink_domain: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] = ""
    """Where the host sits: Forge places a lease larger than one node on whole
    nodes of one NVLink domain, else one rack; a node that names neither only
    takes leases of up to its own GPUs."""
    tpm: str = ""
    """The TPM's TCTI (``device:/dev/tpmrm0`` on hosts; ``swtpm:host=...,port=...``).
    Empty: no TPM; the node runs ``not_attested`` and only a scheduler with
    ``attestation.required = false`` places work on it."""
    event_log: str = "/sys/kernel/security/tpm0/binary_bios_measurements"
    attestation_interval_s: PositiveFloat = 300.0
    """Re-attest this often (and at every start: a reboot restarts the agent)."""
    insecure_unsealed: bool = False
    """Development only: run engines without their own network namespace, where
    sealing is impossible (not root). Responses and ``/v1/models`` then say
    ``insecure``, and only a scheduler with ``allow_unsealed`` places work here."""
    heartbeat_interval_s: PositiveFloat = 2.0
    engine: Literal["cpu", "vllm"] = "cpu"
    engine_mode: Literal["model", "instant", "paced"] = "model"
    """``instant`` returns fixed tokens with no model: for measuring Volt itself;
    ``paced`` the same tokens at a GPU's cadence (``paced_ttft_ms``, ``paced_itl_ms``)."""
    paced_ttft_ms: PositiveFloat = 100.0
    paced_itl_ms: PositiveFloat = 20.0
    paced_schedule: Literal["batch", "stream"] = "batch"
    """``batch``: one decoding step for every running stream each ``paced_itl_ms``,
    as a GPU engine's continuous batching produces them (all streams' tokens at
    once); ``stream``: each stream on its own clock from its start (the worst
    case for a relay: tokens spread evenly over time)."""
    model: SubjectToken = "volt-tiny"
    engine_threads: Annotated[int, msgspec.Meta(ge=1)] = 1
    engine_socket: str = ""
    """Empty: a private runtime folder (Unix socket paths must stay short)."""
    max_inflight: Annotated[int, msgspec.Meta(ge=1)] = 512
    engine_startup_timeout_s: PositiveFloat = 300.0
    stream_interval_ms: Annotated[float, msgspec.Meta(ge=0)] = 3.0
    """Stream chunks for one API replica produced within this long travel in one
    bus message (a stream's first token, final answers and errors never wait;
    0: every chunk its own message)."""
    engine_probe_interval_s: PositiveFloat = 1.0
    """How often a running engine is asked ``/health`` (each ask waits as long)."""
    engine_hang_timeout_s: PositiveFloat = 15.0
    """An engine that has not answered for this long is killed and restarted; its
    requests fail over. It leaves placement after two unanswered probes."""
    embedding_model: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")] = ""
    """Also serve this embedding model (``all-minilm-l6-v2``) from its own engine."""
    vllm_python: str = ""
    """``engine = vllm``: the Python of vLLM's own virtual environment (empty:
    this one). vLLM's dependencies pin their own torch; they stay out of Volt's."""
    max_adapters: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    """Tuned models' adapters an engine keeps loaded; one more unloads the least
    recently used idle one."""
    vllm_max_loras: Annotated[int, msgspec.Meta(ge=0, le=256)] = 8
    """``engine = vllm``: tuned models' LoRA adapters served at once in one batch
    (``--max-loras``); 0 serves no tuned models."""
    vllm_max_lora_rank: Literal[8, 16, 32, 64] = 64
    """The largest LoRA rank vLLM accepts (a job's ``lora_rank`` is at most 64)."""
    vllm_args: list[str] = []
    """Extra ``vllm serve`` arguments (``--max-model-len``, ``--gpu-memory-utilization``...)."""

    def __post_init__(self) -> None:
        _check_tokens(self, ("node_id", "metro", "tier", "model", "embedding_model"))


def _check_tokens(settings: msgspec.Struct, names: tuple[str, ...]) -> None:
    # Patterns' `$` also matches before a final newline; NATS subject tokens
    # must be exact, so check again.
    for name in names:
        value = getattr(settings, name)
        if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError(f"`{name}` may only hold letters, digits, `-` and `_`")


class VaultSettings(_Section):
    """Vault: whole bare-metal racks for one tenant, provisioned and cleaned
    through their BMCs' Redfish."""

    credentials_key_file: str = ""
    """The 32-byte key (raw) that BMC credentials are encrypted under in the
    store. Empty: ``vault-credentials.key`` in the secrets folder, made on
    first use. The scheduler and ``volt admin racks`` need it; the API does not."""
    image_url: str = "https://factory.talos.dev/image/{schematic}/{talos_version}/metal-amd64.iso"
    """The Talos boot image a node is given by virtual media (``{talos_version}``
    and ``{schematic}`` are filled in); PXE-only BMCs boot from the network."""
    talos_schematic: str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
    """The Image Factory schematic of the boot image (this default: no extensions)."""
    talos_versions: Annotated[list[Annotated[str, msgspec.Meta(pattern=r"^v\d+\.\d+\.\d+$")]],
                              msgspec.Meta(min_length=1)] = \
        msgspec.field(default_factory=lambda: ["v1.12.1"])
    """The Talos versions a tenant may ask for; the first is the default."""
    power_timeout_s: PositiveFloat = 120.0
    """The longest wait for one power change to land on a node."""
    node_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    """How often a node's failing Redfish step is tried before the rack fails."""
    retry_backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    """The first wait before a step is tried again (doubling each time)."""
    bmc_timeout_s: PositiveFloat = 10.0
    """One Redfish call's timeout."""
    rotate_bmc_passwords: bool = True
    """Cleaning gives each BMC account Vault uses a new random password (where
    the BMC offers Redfish's AccountService), so nothing a tenant might have
    learnt of one outlives the reservation."""
    require_attestation: bool = True
    """A rack becomes ready only when every node's measured boot passed. Off
    (development, BMCs whose nodes cannot attest): a node without a verdict
    is shown ``not_attested`` — never as passed — and the rack goes ready."""
    attest_timeout_s: PositiveFloat = 600.0
    """How long a provisioned rack waits for its nodes' verdicts."""
    reconcile_interval_s: PositiveFloat = 2.0
    redfish_credential_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 86400)] = 8 * 3600
    """How long a minted Redfish proxy credential lasts unless asked otherwise
    (every one is revoked when its rack is released)."""
    proxy_url: str = ""
    """Where tenants reach the Redfish proxy (shown with minted credentials).
    Empty: ``http://<proxy_host>:<proxy_port>``."""
    proxy_host: str = "127.0.0.1"
    proxy_port: Port = 8443
    proxy_replica_id: SubjectToken = "redfish-proxy"
    """The proxy's name on the bus (an API replica's identity: it publishes audit
    events only)."""
    proxy_tls_cert: str = ""
    proxy_tls_key: str = ""
    """PEM files to serve the proxy over HTTPS (Redfish clients expect it);
    empty: plain HTTP (development and tests on loopback)."""
    bmc_threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 128
    """Threads for BMC calls (sushy is synchronous): the nodes of a rack are
    driven in parallel, so this bounds how many at once."""


class FinetuneSettings(_Section):
    """Spark fine-tuning: training files and LoRA jobs (``volt/finetune``)."""

    data_key_file: str = ""
    """The 32-byte key (raw) that training files and adapters are encrypted under
    in their metro's object store. Empty: ``finetune-data.key`` in the secrets
    folder, made on first use. The API and the agents need it; the scheduler
    does not (it never reads a file)."""
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1, le=16 * 1024 * 1024)] = 16 * 1024 * 1024
    """The largest training file (the API's body limit is 16 MiB)."""
    max_examples: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    default_epochs: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3
    """``n_epochs: auto``."""
    learning_rate: PositiveFloat = 5e-3
    """The base learning rate; a job's ``learning_rate_multiplier`` scales it."""
    max_seq_tokens: Annotated[int, msgspec.Meta(ge=16)] = 1024
    """Longer examples are cut to this many tokens."""
    progress_interval_s: PositiveFloat = 0.5
    """An agent reports a running job's progress (an event) at most this often."""
    reconcile_interval_s: PositiveFloat = 1.0
    lost_after_s: PositiveFloat = 10.0
    """A running job that its node's heartbeats stop naming for this long (the
    agent restarted, the node went away) is lost there: it is queued again or,
    past ``max_attempts``, fails with that reason."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    """How many times in all a job may be started (the first run included): a
    job lost with its node goes on from its last checkpoint on another run, and
    one lost this many times fails (a node that dies whenever it trains it)."""
    blob_sweep_interval_s: PositiveFloat = 600.0
    """How often the scheduler deletes blobs nobody owns any more (a deleted
    file's or model's, a failed or cancelled job's checkpoints)."""
    blob_grace_s: PositiveFloat = 3600.0
    """A blob whose owner has no record yet is deleted only once it is this old:
    an upload and a checkpoint are written before the record that names them."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "volt")


class VoltConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    identity: IdentitySettings = msgspec.field(default_factory=IdentitySettings)
    attestation: AttestationSettings = msgspec.field(default_factory=AttestationSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    forge: ForgeSettings = msgspec.field(default_factory=ForgeSettings)
    vault: VaultSettings = msgspec.field(default_factory=VaultSettings)
    finetune: FinetuneSettings = msgspec.field(default_factory=FinetuneSettings)

    # Derived values: computed from the settings, never stored twice.

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def store_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{self.data_path / 'volt.db'}"

    def node_id(self) -> str:
        if self.agent.node_id:
            return self.agent.node_id
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48] or "node"
        return f"{host}-{self.agent.metro}"

    def engine_socket(self) -> Path:
        if self.agent.engine_socket:
            return Path(self.agent.engine_socket)
        digest = hashlib.sha256(f"{self.data_path}:{self.node_id()}".encode()).hexdigest()[:12]
        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        return Path(runtime) / f"volt-{os.getuid()}-{digest}" / "engine.sock"

    def embedding_socket(self) -> Path:
        """Beside the main engine's socket, in the same private folder."""
        return self.engine_socket().with_name("embedding.sock")

    def model_dir(self, model: str | None = None) -> Path:
        return self.data_path / "models" / (model or self.agent.model)

    def secrets_path(self) -> Path:
        return Path(self.identity.secrets_dir).expanduser() if self.identity.secrets_dir \
            else self.data_path / "secrets"

    def public_url(self) -> str:
        return (self.identity.public_url or f"http://{self.api.host}:{self.api.port}").rstrip("/")

    def redfish_proxy_url(self) -> str:
        vault = self.vault
        scheme = "https" if vault.proxy_tls_cert else "http"
        return (vault.proxy_url or f"{scheme}://{vault.proxy_host}:{vault.proxy_port}").rstrip("/")


_SECTIONS = ("nats", "store", "api", "scheduler", "agent", "identity", "audit", "attestation",
             "forge", "vault", "finetune")
_LIST_FIELDS = {("agent", "vllm_args"), ("identity", "device_clients"),
                ("scheduler", "metros"), ("scheduler", "tiers"),
                ("vault", "talos_versions")}


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    fields: dict[str, set[str]] = {
        name: {f.name for f in msgspec.structs.fields(typ)}
        for name, typ in (
            ("nats", NatsSettings), ("store", StoreSettings), ("api", ApiSettings),
            ("scheduler", SchedulerSettings), ("agent", AgentSettings),
            ("identity", IdentitySettings), ("audit", AuditSettings),
            ("attestation", AttestationSettings), ("forge", ForgeSettings),
            ("vault", VaultSettings), ("finetune", FinetuneSettings),
        )
    }
    top = {"data_dir", "log_level"}
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("VOLT_"):
            continue
        name = key[5:].lower()
        if name in top:
            out[name] = value
            continue
        for section in _SECTIONS:
            prefix = section + "_"
            field = name[len(prefix):]
            if name.startswith(prefix) and field in fields[section]:
                # A list setting is written as a shell would split it.
                as_list = (section, field) in _LIST_FIELDS
                out.setdefault(section, {})[field] = shlex.split(value) if as_list else value
                break
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> VoltConfig:
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    path = path or (Path(env["VOLT_CONFIG"]) if env.get("VOLT_CONFIG") else None)
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    raw = _merge(raw, _env_overrides(env))
    raw = _merge(raw, overrides or {})
    try:
        return msgspec.convert(raw, VoltConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.api.port`"; lead with the field.
    text = str(exc)
    message, _, where = text.partition(" - at `$.")
    if where:
        return f"{where.rstrip('`')}: {message}"
    return text
