"""The rack inventory: what an operator registers, checked against the BMCs for real.

An operator describes a rack in a TOML file (``volt admin racks add rack.toml``)::

    id = "fra-r1"
    metro = "fra"
    tier = "standard"
    cleaning = "erase"          # or "metadata": what release does to the disks

    [[nodes]]
    name = "fra-r1-n1"          # its hostname, and its identity for attestation
    gpu_model = "H100"
    gpus = 8
    bmc_url = "https://10.1.0.11"
    bmc_username = "admin"
    bmc_password_env = "FRA_R1_N1_BMC"   # or bmc_password = "..."
    # system_id = "..."         # needed only where the BMC has several systems

Registration asks every BMC (in parallel) whether it answers, takes the
credentials, and has the system; it learns what each system can do (virtual
media, boot sources). Only then is the rack stored, ``available``, its
passwords sealed (``credentials.py``). A rack that fails any check is not
stored at all, and the error names each node that failed and why.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from typing import Annotated, Any, Literal

import msgspec

from volt.lifecycle import InvalidTransition
from volt.store.resources import ResourceRecord, ResourceStore
from volt.vault.credentials import CredentialBox
from volt.vault.nodes import fresh_progress
from volt.vault.redfish import BmcError, Connect, connect_bmc
from volt.vault.states import RACKS, RackEvent, RackState

KIND = "rack"
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
"""A rack id or node name: a DNS label (it becomes a hostname), at most 40."""
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Cleaning = Literal["metadata", "erase"]


class NodeEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    gpu_model: Token
    gpus: Annotated[int, msgspec.Meta(ge=0, le=64)]
    bmc_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    bmc_username: str
    bmc_password: str = ""
    bmc_password_env: str = ""
    system_id: str = ""
    """The Redfish system on that BMC; empty: its only one."""
    verify_tls: bool = True
    """Check the BMC's HTTPS certificate (off only for BMCs with self-signed ones)."""
    install_disk: Annotated[str, msgspec.Meta(pattern=r"^/dev/[A-Za-z0-9/_-]+$")] = \
        "/dev/nvme0n1"
    """Where Talos installs itself (its machine config says so)."""


class RackEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: Name
    metro: Token
    tier: Token = "standard"
    cleaning: Cleaning = "erase"
    talos_endpoint: Annotated[str, msgspec.Meta(pattern=r"^https://")] | None = None
    """The Kubernetes API endpoint the nodes' Talos configs name (a VIP or DNS
    name in front of the control plane); absent: the first node, port 6443."""
    nodes: Annotated[list[NodeEntry], msgspec.Meta(min_length=1, max_length=256)]


class RegistrationError(Exception):
    """The rack was not registered; the message says which nodes failed and why."""


def parse_rack(data: bytes) -> RackEntry:
    """The operator's TOML file, validated; errors name the field."""
    import tomllib

    try:
        raw = tomllib.loads(data.decode())
        entry = msgspec.convert(raw, RackEntry)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegistrationError(f"not a TOML file: {exc}") from exc
    except msgspec.ValidationError as exc:
        raise RegistrationError(str(exc)) from exc
    names = [node.name for node in entry.nodes]
    if len(set(names)) != len(names):
        raise RegistrationError("two nodes have the same name")
    return entry


def _password(node: NodeEntry, env: dict[str, str]) -> str:
    if bool(node.bmc_password) == bool(node.bmc_password_env):
        raise RegistrationError(f"node {node.name}: give exactly one of bmc_password and "
                                "bmc_password_env")
    if node.bmc_password:
        return node.bmc_password
    value = env.get(node.bmc_password_env)
    if not value:
        raise RegistrationError(f"node {node.name}: ${node.bmc_password_env} is not set")
    return value


def _check(node: NodeEntry, password: str, connect: Connect) -> dict[str, Any]:
    """Ask the BMC (in a thread): it answers, takes the credentials, has the system."""
    bmc = connect(node.bmc_url, node.bmc_username, password, node.verify_tls)
    systems = bmc.systems()
    system_id = node.system_id
    if not system_id:
        if len(systems) != 1:
            raise BmcError(f"the BMC has {len(systems)} systems: name one (system_id)",
                           "not_found")
        system_id = systems[0]
    elif system_id not in systems:
        raise BmcError(f"the BMC has no system {system_id}", "not_found")
    return asdict(bmc.facts(system_id))


async def register(store: ResourceStore, box: CredentialBox, entry: RackEntry, *, now: float,
                   connect: Connect = connect_bmc, env: dict[str, str] | None = None,
                   registered_by: str = "operator") -> ResourceRecord:
    env = dict(os.environ) if env is None else env
    if await store.get(KIND, entry.id) is not None:
        raise RegistrationError(f"rack {entry.id} is registered already")
    others = await store.in_states(KIND, [s.value for s in RackState])
    taken = {node["name"] for rack in others for node in rack.spec["nodes"]}
    clash = sorted(taken & {node.name for node in entry.nodes})
    if clash:
        raise RegistrationError(f"node names already in another rack: {', '.join(clash)}")
    bmcs = {(node["bmc_url"].rstrip("/"), node["system_id"]): rack.id
            for rack in others for node in rack.spec["nodes"]}
    passwords = {node.name: _password(node, env) for node in entry.nodes}
    results = await asyncio.gather(
        *(asyncio.to_thread(_check, node, passwords[node.name], connect)
          for node in entry.nodes), return_exceptions=True)
    failures = [f"{node.name} ({node.bmc_url}): {result} [{result.code}]"
                for node, result in zip(entry.nodes, results, strict=True)
                if isinstance(result, BmcError)]
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, BmcError):
            raise result
    if failures:
        raise RegistrationError("the BMC check failed for " + "; ".join(failures))
    facts: list[dict[str, Any]] = [r for r in results if isinstance(r, dict)]
    for node, fact in zip(entry.nodes, facts, strict=True):
        holder = bmcs.get((node.bmc_url.rstrip("/"), fact["system_id"]))
        if holder is not None:
            raise RegistrationError(f"node {node.name}: its system is already in rack {holder}")
    nodes = [{
        "name": node.name, "gpu_model": node.gpu_model, "gpus": node.gpus,
        "bmc_url": node.bmc_url, "bmc_username": node.bmc_username,
        "bmc_password": box.seal(passwords[node.name], rack_id=entry.id, node=node.name),
        "system_id": fact["system_id"], "verify_tls": node.verify_tls,
        "install_disk": node.install_disk,
        "virtual_media": fact["virtual_media"], "boot_sources": fact["boot_sources"],
        "hardware": {"manufacturer": fact["manufacturer"], "model": fact["model"],
                     "serial": fact["serial"]},
    } for node, fact in zip(entry.nodes, facts, strict=True)]
    spec = {"metro": entry.metro, "tier": entry.tier, "cleaning": entry.cleaning,
            "talos_endpoint": entry.talos_endpoint or f"https://{entry.nodes[0].name}:6443",
            "nodes": nodes, "registered_by": registered_by}
    return await store.create(kind=KIND, id=entry.id, org_id="", state=RackState.AVAILABLE,
                              spec=spec, status={}, now=now, reason="registered")


async def operator_transition(store: ResourceStore, rack_id: str, event: RackEvent,
                              reason: str, *, now: float) -> ResourceRecord:
    """An operator's move of a resting rack (taking an available one out for
    maintenance, or sending a repaired one back to cleaning). Only resting
    states take these events, so no scheduler work is under way on the rack;
    the compare-and-set still refuses a row that changed since it was read."""
    record = await store.get(KIND, rack_id)
    if record is None:
        raise RegistrationError(f"no rack {rack_id}")
    try:
        to = RACKS.next(RackState(record.state), event)
    except InvalidTransition as exc:
        raise RegistrationError(f"rack {rack_id} is {record.state}: it cannot take "
                                f"{event.value}") from exc
    status = dict(record.status)
    if to is RackState.CLEANING:
        status["nodes"] = fresh_progress(record.spec["nodes"])
    return await store.transition(record, event=event.value, to=to.value, now=now,
                                  reason=reason, status=status)
