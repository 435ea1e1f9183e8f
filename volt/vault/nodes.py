"""Driving a rack's nodes through their BMCs: every node at once, each through
a fixed list of steps, each step's outcome stored as it happens.

Provisioning, per node: power off → boot once from the Talos image (virtual
media, or PXE where the BMC has none) → power on. Cleaning, per node: disks
erased (``erase`` racks; a BMC that cannot is a failure, recorded, never
skipped), BIOS reset, boot override cleared (``RedfishBmc.clean``) → power
off → the BMC account's password rotated (where the BMC offers Redfish's
AccountService; "not supported" recorded where not). The new password is
sealed into the node's progress *before* the BMC is told it, so a scheduler
killed between the two still holds the password the BMC now takes; it then
replaces the old one in the rack's row.

A node's progress lives in the rack's row (``status.nodes[<name>]``: the last
step done, the one under way, attempts, last error), so a scheduler that
restarts carries on from the step after the last one stored; every step is
idempotent, so one redone after a crash does no harm. Every wait on a BMC is
bounded (``vault.power_timeout_s``) and a failing step is retried with
backoff (``vault.node_attempts``) before the node counts as failed.

``sushy`` blocks, so BMC calls run on a thread pool of their own
(``vault.bmc_threads``): a rack's nodes go in parallel instead of queueing
for asyncio's few default threads.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from volt.config import VaultSettings
from volt.lifecycle import remaining
from volt.store.resources import ResourceRecord, ResourceStore, StaleResource
from volt.vault.credentials import CredentialBox
from volt.vault.redfish import BmcError, Connect, RedfishBmc

T = TypeVar("T")
POLL_S = 0.5
PROVISION_STEPS = ("power_off", "boot_override", "power_on")
CLEAN_STEPS = ("clean", "power_off", "rotate_credentials")
Work = Callable[[], Awaitable[dict[str, Any] | None]]
"""One step's work; what it returns is stored with the node's progress."""


def fresh_progress(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every node at the start of a step list (provisioning or cleaning)."""
    return {n["name"]: {"state": "pending", "step": "", "running": "", "attempts": 0,
                        "last_error": "", "steps": []} for n in nodes}


class NodeFailed(Exception):
    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node


class RackMoved(Exception):
    """The rack changed under its work (released, or another writer): stop."""


class Progress:
    """The rack's record while its nodes are driven: each node's progress is
    written through at once (under one lock: the nodes run in parallel)."""

    def __init__(self, store: ResourceStore, clock: Callable[[], float],
                 record: ResourceRecord) -> None:
        self.store = store
        self.clock = clock
        self.record = record
        self._lock = asyncio.Lock()

    def node(self, name: str) -> dict[str, Any]:
        nodes: dict[str, dict[str, Any]] = self.record.status.get("nodes", {})
        return dict(nodes.get(name, {}))

    async def save(self, name: str, *, inventory: dict[str, Any] | None = None,
                   **fields: Any) -> None:
        """The node's progress ``fields``, and with ``inventory`` a change to
        the node's entry in the rack's spec (its BMC password, rotated) in the
        same write."""
        async with self._lock:
            nodes = dict(self.record.status.get("nodes", {}))
            nodes[name] = {**nodes.get(name, {}), **fields}
            spec = None if inventory is None else {**self.record.spec, "nodes": [
                {**n, **inventory} if n["name"] == name else n
                for n in self.record.spec["nodes"]]}
            try:
                self.record = await self.store.update_status(
                    self.record, {**self.record.status, "nodes": nodes}, self.clock(),
                    spec=spec)
            except StaleResource as exc:
                raise RackMoved(self.record.id) from exc

    def spec_of(self, name: str) -> dict[str, Any]:
        node: dict[str, Any] = next(n for n in self.record.spec["nodes"] if n["name"] == name)
        return node


class NodeDriver:
    def __init__(self, store: ResourceStore, settings: VaultSettings, box: CredentialBox, *,
                 connect: Connect, clock: Callable[[], float]) -> None:
        self.store = store
        self.settings = settings
        self.box = box
        self.connect = connect
        self.clock = clock
        self._threads = ThreadPoolExecutor(settings.bmc_threads, thread_name_prefix="volt-bmc")

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, partial(function, *args, **kwargs))

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    # --- one node's BMC ---------------------------------------------------------------

    def lazy_bmc(self, record: ResourceRecord, node: dict[str, Any]
                 ) -> Callable[[], Awaitable[RedfishBmc]]:
        """The node's BMC, connected on first use (inside a step, so a BMC that
        does not answer counts as that step's failure and is retried)."""
        held: list[RedfishBmc] = []

        async def get() -> RedfishBmc:
            if not held:
                password = self.box.open(node["bmc_password"], rack_id=record.id,
                                         node=node["name"])
                held.append(await self.call(self.connect, node["bmc_url"],
                                            node["bmc_username"], password,
                                            bool(node.get("verify_tls", True))))
            return held[0]

        return get

    async def power(self, bmc: RedfishBmc, system_id: str, on: bool) -> None:
        await self.call(bmc.power, system_id, on)
        deadline = time.monotonic() + self.settings.power_timeout_s
        want = "on" if on else "off"
        while await self.call(bmc.power_state, system_id) != want:
            if time.monotonic() > deadline:
                raise BmcError(f"not powered {want} within {self.settings.power_timeout_s:.0f}"
                               " s", "timeout")
            await asyncio.sleep(POLL_S)

    async def step(self, progress: Progress, name: str, step: str, work: Work) -> None:
        """Run one node step, retrying a BMC's failure with backoff; its outcome
        is stored either way."""
        attempts = int(progress.node(name).get("attempts", 0))
        for attempt in range(1, self.settings.node_attempts + 1):
            await progress.save(name, running=step)
            try:
                extra = await work() or {}
            except BmcError as exc:
                attempts += 1
                await progress.save(name, attempts=attempts,
                                    last_error=f"{step}: {exc} [{exc.code}]")
                if attempt == self.settings.node_attempts:
                    raise NodeFailed(name, f"{step} failed {attempt} times; last: {exc}"
                                     ) from exc
                await asyncio.sleep(self.settings.retry_backoff_s * 2 ** (attempt - 1))
            else:
                await progress.save(name, step=step, running="", **extra)
                return

    async def each_node(self, record: ResourceRecord,
                        drive: Callable[[Progress, dict[str, Any]], Awaitable[None]]
                        ) -> tuple[ResourceRecord, list[NodeFailed]]:
        """Drive every node at once: the rack as last stored, and the nodes
        that failed, with why."""
        progress = Progress(self.store, self.clock, record)
        results = await asyncio.gather(*(drive(progress, node) for node in record.spec["nodes"]),
                                       return_exceptions=True)
        failed: list[NodeFailed] = []
        for node, result in zip(record.spec["nodes"], results, strict=True):
            if isinstance(result, NodeFailed):
                failed.append(result)
                await progress.save(node["name"], state="failed", running="")
            elif isinstance(result, BaseException):
                raise result
        return progress.record, failed

    async def rotate(self, progress: Progress, name: str) -> str:
        """A new random password for the node's BMC account; the outcome."""
        if not self.settings.rotate_bmc_passwords:
            return "not done: vault.rotate_bmc_passwords is off"
        rack_id, node = progress.record.id, progress.spec_of(name)
        url, user, verify = node["bmc_url"], node["bmc_username"], bool(
            node.get("verify_tls", True))
        sealed = progress.node(name).get("pending_password")
        if not sealed:
            sealed = self.box.seal(secrets.token_urlsafe(24), rack_id=rack_id, node=name)
            await progress.save(name, pending_password=sealed)  # before the BMC has it
        new = self.box.open(sealed, rack_id=rack_id, node=name)
        old = self.box.open(node["bmc_password"], rack_id=rack_id, node=name)
        try:
            bmc = await self.call(self.connect, url, user, old, verify)
            outcome = await self.call(bmc.rotate_password, user, new)
        except BmcError as exc:
            if exc.code != "unauthorized":
                raise
            outcome = "done"  # an earlier try changed it, then stopped: the check says
        if outcome != "done":
            await progress.save(name, pending_password="")
            return outcome
        checked = await self.call(self.connect, url, user, new, verify)
        await self.call(checked.systems)  # the BMC takes the new one (else: retried)
        await progress.save(name, pending_password="", inventory={"bmc_password": sealed})
        return "done"

    # --- the two step lists -----------------------------------------------------------

    async def provision(self, record: ResourceRecord, image_url: str
                        ) -> tuple[ResourceRecord, list[NodeFailed]]:
        async def node_work(progress: Progress, node: dict[str, Any]) -> None:
            name, system_id = node["name"], node["system_id"]
            state = progress.node(name)
            if state.get("state") == "booted":
                return
            await progress.save(name, state="provisioning")
            bmc = self.lazy_bmc(record, node)
            for step in remaining(PROVISION_STEPS, state.get("step", "")):
                work: Work
                if step == "power_off":
                    async def work() -> dict[str, Any] | None:
                        await self.power(await bmc(), system_id, on=False)
                        return None
                elif step == "boot_override":
                    async def work() -> dict[str, Any] | None:
                        way = await self.call((await bmc()).boot_from_image, system_id,
                                              image_url)
                        return {"boot": way}
                else:
                    async def work() -> dict[str, Any] | None:
                        await self.power(await bmc(), system_id, on=True)
                        return {"booted_at": self.clock()}
                await self.step(progress, name, step, work)
            await progress.save(name, state="booted", last_error="")

        return await self.each_node(record, node_work)

    async def clean(self, record: ResourceRecord, *, erase: bool
                    ) -> tuple[ResourceRecord, list[NodeFailed]]:
        async def node_work(progress: Progress, node: dict[str, Any]) -> None:
            name, system_id = node["name"], node["system_id"]
            state = progress.node(name)
            if state.get("state") == "cleaned":
                return
            await progress.save(name, state="cleaning")
            bmc = self.lazy_bmc(record, node)
            for step in remaining(CLEAN_STEPS, state.get("step", "")):
                work: Work
                if step == "clean":
                    async def work() -> dict[str, Any] | None:
                        report = await self.call((await bmc()).clean, system_id, erase=erase)
                        return {"steps": [{"step": s.step, "outcome": s.outcome}
                                          for s in report.steps]}
                elif step == "power_off":
                    async def work() -> dict[str, Any] | None:
                        await self.power(await bmc(), system_id, on=False)
                        return None
                else:
                    async def work() -> dict[str, Any] | None:
                        outcome = await self.rotate(progress, name)
                        return {"steps": [*progress.node(name).get("steps", []),
                                          {"step": "credentials_rotated", "outcome": outcome}]}
                await self.step(progress, name, step, work)
            if erase:
                steps = progress.node(name).get("steps", [])
                erased = next((s["outcome"] for s in steps if s["step"] == "secure_erase"),
                              "not run")
                if erased != "done":
                    # The tenant's data may still be on the disks: this node
                    # goes to no one else until an operator has seen to it.
                    raise NodeFailed(name, f"disks not erased ({erased})")
            await progress.save(name, state="cleaned", last_error="")

        return await self.each_node(record, node_work)
