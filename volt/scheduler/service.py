"""The scheduler process: the single writer of placement state.

It builds the live node table from hellos and heartbeats, expires silent
nodes, keeps the model catalog in the store, and publishes the placement view
(``volt.sched.view``) whenever placement-relevant facts change and every
``view_interval_s`` otherwise (for load). API replicas route from that view;
``volt.sched.place`` answers single placement questions with reasons.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.finetune.blobs import BlobBuckets
from volt.finetune.jobs import FinetuneError, FineTuning
from volt.finetune.sweeper import BlobSweeper
from volt.forge.leases import Forge, ForgeError
from volt.lifecycle import Refusal
from volt.placement import DEFAULT_POLICY, PlacementQuery, Policy
from volt.scheduler.node_states import GONE, LIVE
from volt.scheduler.node_table import NodeRecord, NodeTable
from volt.scheduler.senders import sent_by
from volt.store import Inventory
from volt.vault.racks import Vault, VaultError
from volt.wire import (
    FINETUNE,
    FORGE,
    NODE,
    SCHEDULER,
    VAULT,
    AttestationReportAnswer,
    AttestationReportQuery,
    AvailabilityAnswer,
    AvailabilityQuery,
    FamilyDecoder,
    FileChanged,
    FileDelete,
    FileRecord,
    FinetuneRefused,
    ForgeRefused,
    Heartbeat,
    JobCancel,
    JobChanged,
    JobCreate,
    KubeconfigMint,
    KubeconfigMinted,
    KubeconfigRevoke,
    LeaseChanged,
    LeaseCreate,
    LeaseTerminate,
    ModelCard,
    ModelDelete,
    ModelsDeleted,
    NodeAssignment,
    NodeHello,
    PlaceAnswer,
    PlacementView,
    PlaceQuery,
    RackChanged,
    RackRelease,
    RackReserve,
    RedfishCredentialMint,
    RedfishCredentialRevoke,
    TalosConfigQuery,
    TrainProgress,
    VaultRefused,
    VerifierKeysAnswer,
    VerifierKeysQuery,
    ViewQuery,
    WireMessage,
    encode,
    subjects,
)

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        table: NodeTable,
        inventory: Inventory,
        *,
        view_interval_s: float = 1.0,
        sweep_interval_s: float = 0.1,
        policy: Policy = DEFAULT_POLICY,
        metros: Iterable[str] = (),
        tiers: Iterable[str] = (),
        forge: Forge | None = None,
        vault: Vault | None = None,
        finetune: FineTuning | None = None,
    ) -> None:
        self.table = table
        self.finetune = finetune
        """Fine-tuning's files and jobs (None: its commands are refused)."""
        if finetune is not None:
            finetune.nodes = table.records
            finetune.send = self._send_training
            finetune.on_change = self.changed
        self.forge = forge
        """Forge's leases (None: Forge's commands are refused)."""
        self.vault = vault
        """Vault's racks (None: Vault's commands are refused)."""
        self.inventory = inventory
        self.view_interval_s = view_interval_s
        self.sweep_interval_s = sweep_interval_s
        self.policy = policy
        self.scheduler_id = "sched-" + secrets.token_hex(4)
        self._catalog: dict[str, ModelCard] = {}
        # Metros and tiers stay known after their last node goes: a pin to one
        # is "try later" (503), a pin to anything else "never" (400).
        self._metros: set[str] = set(metros)
        self._tiers: set[str] = set(tiers)
        self._seq = 0
        self._nc: Client | None = None
        self._dirty = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    def changed(self) -> None:
        """Something placement depends on changed: publish the view now."""
        self._dirty.set()

    def view(self) -> PlacementView:
        self._seq += 1
        nodes = self.table.views()
        leased = self.forge.leased_nodes() if self.forge is not None else {}
        if leased:
            nodes = [msgspec.structs.replace(node, lease_id=leased[node.node_id])
                     if node.node_id in leased else node for node in nodes]
        self._metros.update(node.metro for node in nodes)
        self._tiers.update(node.tier for node in nodes)
        cards = list(self._catalog.values())
        if self.finetune is not None:
            cards += self.finetune.cards.values()
        return PlacementView(
            scheduler_id=self.scheduler_id, seq=self._seq, nodes=nodes,
            models=sorted(cards, key=lambda card: card.id),
            metros=sorted(self._metros), tiers=sorted(self._tiers),
        )

    async def run(self, nc: Client) -> None:
        self._nc = nc
        self._catalog = {card.id: card for card in await self.inventory.models()}
        metros, tiers = await self.inventory.places()
        self._metros |= metros
        self._tiers |= tiers
        for event in subjects.NODE_EVENTS:
            await nc.subscribe(subjects.node_events(event), cb=self._on_node_message,
                               pending_msgs_limit=65536)
        await nc.subscribe(subjects.SCHED_VIEW_GET, cb=self._on_view_query)
        await nc.subscribe(subjects.SCHED_PLACE, cb=self._on_place_query)
        if self.forge is not None:
            await self.forge.load()  # before any command: leases resume first
        buckets = BlobBuckets(nc)  # fine-tuning blobs: names and deletes only (no key)
        if self.finetune is not None:
            self.finetune.buckets = buckets
            await self.finetune.load()
        await nc.subscribe(subjects.SCHED_FORGE, cb=self._on_forge_command)
        await nc.subscribe(subjects.SCHED_VAULT, cb=self._on_vault_command)
        await nc.subscribe(subjects.SCHED_FINETUNE, cb=self._on_finetune_command)
        log.info("scheduler started", extra={"scheduler_id": self.scheduler_id})
        async with asyncio.TaskGroup() as tasks:
            if self.forge is not None:
                tasks.create_task(self.forge.run())
            if self.vault is not None:
                tasks.create_task(self.vault.run())
            if self.finetune is not None:
                tasks.create_task(self.finetune.run())
                settings = self.finetune.settings
                sweeper = BlobSweeper(self.finetune.store, buckets,
                                      grace_s=settings.blob_grace_s,
                                      metros=lambda: {n.metro for n in self.table.records()})
                tasks.create_task(sweeper.run(settings.blob_sweep_interval_s))
            await self._publish_forever()

    async def _publish_forever(self) -> None:
        assert self._nc is not None
        last_publish = 0.0
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), self.sweep_interval_s)
            except TimeoutError:
                pass
            expired = self.table.sweep()
            for node_id in expired:
                log.warning("node lost", extra={"node_id": node_id})
                if self.forge is not None:
                    self.forge.node_gone(node_id)
            for node_id in self.table.expire_verdicts():
                log.warning("attestation expired", extra={"node_id": node_id})
                self._dirty.set()
            now = time.monotonic()
            if self._dirty.is_set() or expired or now - last_publish >= self.view_interval_s:
                self._dirty.clear()
                last_publish = now
                try:
                    await self._nc.publish(subjects.SCHED_VIEW, encode(self.view()))
                except Exception as exc:  # NATS down: the next round retries
                    log.warning("view publish failed: %s", type(exc).__name__)

    async def _on_node_message(self, msg: Msg) -> None:
        message = NODE.decode_or_drop(msg.data)
        if message is None:
            return
        if not sent_by(msg, message.node_id):
            return
        if isinstance(message, TrainProgress):
            if self.finetune is not None:
                self._spawn(self.finetune.progress(message))
            return
        if isinstance(message, Heartbeat) and self.finetune is not None:
            self.finetune.node_report(message.node_id, message.training)
        if self.table.observe(message):
            self._dirty.set()
            log.info("node changed", extra={
                "node_id": message.node_id,
                "state": getattr(self.table.get(message.node_id), "state", None),
            })
        record = self.table.get(message.node_id)
        if record is not None:
            self._forge_sees(record)
        if (self.forge is not None and isinstance(message, Heartbeat)
                and message.lease_id != self.forge.assignment(message.node_id)):
            self.assign(message.node_id, self.forge.assignment(message.node_id))
        if isinstance(message, NodeHello):
            self._spawn(self.inventory.record_node(message))
        new_models = set(getattr(message, "models", ())) - self._catalog.keys()
        if new_models:
            now = int(time.time())
            for model_id in new_models:
                self._catalog[model_id] = ModelCard(id=model_id, created=now)
            self._spawn(self.inventory.add_models(new_models))
            self._dirty.set()

    def _spawn(self, work: object) -> None:
        # Store writes must not stall heartbeat ingestion; they are few (joins,
        # new models) and idempotent, so a failure is logged and retried next join.
        async def guarded() -> None:
            try:
                await work  # type: ignore[misc]
            except Exception:
                log.exception("store write failed")

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_view_query(self, msg: Msg) -> None:
        if msg.reply and isinstance(SCHEDULER.decode_or_drop(msg.data), ViewQuery):
            await msg.respond(encode(self.view()))

    async def _on_place_query(self, msg: Msg) -> None:
        query = SCHEDULER.decode_or_drop(msg.data)
        if not msg.reply or not isinstance(query, PlaceQuery):
            return
        decision = self.policy.place(
            PlacementQuery(
                model=query.model,
                metros=frozenset(query.metros) if query.metros is not None else None,
                tier=query.tier,
            ),
            self.table.views(),
            explain=True,
        )
        node = decision.node
        await msg.respond(encode(PlaceAnswer(
            node_id=node.node_id if node else None,
            metro=node.metro if node else None,
            rejected=decision.rejected,
        )))

    # --- Forge ---------------------------------------------------------------------

    def _forge_sees(self, record: NodeRecord) -> None:
        if self.forge is None:
            return
        if record.state in GONE:
            self.forge.node_gone(record.node_id)
            return
        self.forge.node_seen(
            record.node_id, metro=record.metro, tier=record.tier,
            gpu_names=[gpu.name for gpu in record.gpus], rack=record.rack,
            nvlink_domain=record.nvlink_domain,
            schedulable=record.state in LIVE and not record.problems)

    def assign(self, node_id: str, lease_id: str) -> None:
        """Tell a node to hand its GPUs to ``lease_id`` (or take them back)."""
        if self._nc is not None:
            self._spawn(self._nc.publish(subjects.assignment(node_id), encode(
                NodeAssignment(node_id=node_id, lease_id=lease_id))))

    def handed_over(self, node_id: str) -> str | None:
        """The lease a node's agent says its GPUs are handed to (None: no live node)."""
        record = self.table.get(node_id)
        return record.lease_id if record is not None and record.state in LIVE else None

    def spark_inflight(self, node_id: str) -> int:
        """Spark requests on a node at its last heartbeat."""
        record = self.table.get(node_id)
        return sum(record.inflight_by_replica.values()) if record is not None else 0

    def _in_task(self, answer: Coroutine[Any, Any, None]) -> None:
        # nats-py runs a subscription's callbacks one at a time: a command
        # that waits (on Kubernetes, on the store) must not hold up the others,
        # so each runs as its own task (Forge and Vault serialize what must be).
        task = asyncio.create_task(answer)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_forge_command(self, msg: Msg) -> None:
        self._in_task(self._answer(msg, FORGE, self._forge_answer, ForgeError, ForgeRefused,
                                   "lease"))

    async def _answer(self, msg: Msg, family: FamilyDecoder[Any],
                      apply: Callable[[Any], Awaitable[WireMessage]],
                      refusal: type[Refusal],
                      refused: type[ForgeRefused | VaultRefused | FinetuneRefused],
                      noun: str) -> None:
        """Apply one command of a writer's family and answer it: the result, or
        the refusal (``code``/``status``) the API passes on to the client."""
        command = family.decode_or_drop(msg.data)
        if not msg.reply or command is None:
            return
        answer: WireMessage
        try:
            answer = await apply(command)
        except refusal as exc:
            answer = refused(code=exc.code, message=str(exc), status=exc.status,
                             param=exc.param)
        except Exception as exc:
            log.exception("%s command failed", family.family)
            answer = refused(code=f"{family.family}_error", status=500,
                             message=f"The scheduler could not apply the command "
                                     f"({type(exc).__name__}); nothing was changed "
                                     f"unless the {noun} says so.")
        await msg.respond(encode(answer))

    async def _forge_answer(self, command: object) -> WireMessage:
        forge = self.forge
        if forge is None:
            raise ForgeError("Forge is not enabled on this Volt (no forge.kubeconfig).",
                             code="forge_disabled", status=503)
        if isinstance(command, AvailabilityQuery):
            return AvailabilityAnswer(rows=forge.availability(command))
        if isinstance(command, LeaseCreate):
            record = await forge.create(command)
        elif isinstance(command, LeaseTerminate):
            record = await forge.terminate(command.org_id, command.lease_id)
        elif isinstance(command, KubeconfigRevoke):
            record = await forge.revoke(command.org_id, command.lease_id,
                                        command.kubeconfig_id)
        elif isinstance(command, KubeconfigMint):
            minted = await forge.mint(command.org_id, command.lease_id, command.ttl_s)
            assert forge.kube is not None
            return KubeconfigMinted(
                kubeconfig_id=minted.kubeconfig_id, lease_id=command.lease_id,
                token=minted.token.token, expires_at=minted.token.expires_at,
                server=forge.kube.server, ca_pem=forge.kube.ca_pem.decode(),
                namespace=minted.namespace)
        else:
            raise ForgeError("Not a Forge command.", code="invalid_command", status=400)
        return LeaseChanged(lease_id=record.id, state=record.state)

    # --- Vault ---------------------------------------------------------------------

    async def _on_vault_command(self, msg: Msg) -> None:
        self._in_task(self._answer(msg, VAULT, self._vault_answer, VaultError, VaultRefused,
                                   "rack"))

    async def _vault_answer(self, command: object) -> WireMessage:
        vault = self.vault
        if vault is None:
            raise VaultError("Vault is not enabled on this Volt.", code="vault_disabled",
                             status=503)
        if isinstance(command, RackReserve):
            record = await vault.reserve(command)
        elif isinstance(command, RackRelease):
            record = await vault.release(command.org_id, command.rack_id)
        elif isinstance(command, AttestationReportQuery):
            return AttestationReportAnswer(
                jws=await vault.attestation_report(command.org_id, command.rack_id))
        elif isinstance(command, RedfishCredentialMint):
            return await vault.mint_credential(command)
        elif isinstance(command, RedfishCredentialRevoke):
            record = await vault.revoke_credential(command.org_id, command.rack_id,
                                                   command.credential_id)
        elif isinstance(command, TalosConfigQuery):
            return await vault.talos_config(command.org_id, command.rack_id)
        elif isinstance(command, VerifierKeysQuery):
            return VerifierKeysAnswer(jwks=msgspec.json.encode(vault.verifier_keys()))
        else:
            raise VaultError("Not a Vault command.", code="invalid_command", status=400)
        return RackChanged(rack_id=record.id, state=record.state)

    # --- Fine-tuning ----------------------------------------------------------------

    async def _send_training(self, node_id: str, message: WireMessage) -> None:
        if self._nc is not None:
            await self._nc.publish(subjects.train(node_id), encode(message))

    async def _on_finetune_command(self, msg: Msg) -> None:
        self._in_task(self._answer(msg, FINETUNE, self._finetune_answer, FinetuneError,
                                   FinetuneRefused, "job"))

    async def _finetune_answer(self, command: object) -> WireMessage:
        finetune = self.finetune
        if finetune is None:
            raise FinetuneError("Fine-tuning is not enabled on this Volt.",
                                code="finetune_disabled", status=503)
        if isinstance(command, FileRecord):
            record = await finetune.record_file(command)
            return FileChanged(file_id=record.id, state=record.state,
                               metro=record.spec["metro"])
        if isinstance(command, FileDelete):
            record = await finetune.delete_file(command.org_id, command.file_id)
            return FileChanged(file_id=record.id, state=record.state,
                               metro=record.spec["metro"])
        if isinstance(command, ModelDelete):
            return ModelsDeleted(model_ids=await finetune.delete_model(command.org_id,
                                                                      command.model_id))
        if isinstance(command, JobCreate):
            record = await finetune.create_job(command)
        elif isinstance(command, JobCancel):
            record = await finetune.cancel_job(command.org_id, command.job_id)
        else:
            raise FinetuneError("Not a fine-tuning command.", code="invalid_command",
                                status=400)
        return JobChanged(job_id=record.id, state=record.state)
