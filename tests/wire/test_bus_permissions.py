"""Least privilege on the bus, against a real nats-server with the generated configuration.

Each case is one identity trying one publish or one subscription. Whether it
went through is observed from the other side (an operator that watches, or
that publishes to the subscriber), and a refusal must also come back from the
server as a permissions violation: a case cannot pass by a message merely
getting lost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from volt.identity.bus_authority import BusAuthority
from volt.identity.workload_ca import WorkloadCA
from volt.up.nats_server import NatsServer, nats_server_binary
from volt.wire import bus, permissions, subjects


@dataclass
class Bus:
    server: NatsServer
    authority: BusAuthority
    folders: dict[str, Path]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    root = tmp_path_factory.mktemp("bus")
    authority = BusAuthority(root / "bus", root / "secrets", "volt.test")
    folders = {
        "fra-1": authority.node("fra", "fra-1"),
        "fra-2": authority.node("fra", "fra-2"),
        "ams-1": authority.node("ams", "ams-1"),
        "fra-3 enrolling": authority.enrolling_node("fra", "fra-3"),
        "api-a": authority.api("api-a"),
        "api-b": authority.api("api-b"),
        "scheduler": authority.scheduler(),
        "operator": authority.operator("watch"),
    }
    server = NatsServer(store_dir=root / "js", log_file=root / "nats.log", authority=authority)
    with server:
        yield Bus(server, authority, folders)


INBOXES = {"fra-3 enrolling": ("node", "fra-3"), "fra-1": ("node", "fra-1"),
           "fra-2": ("node", "fra-2"), "ams-1": ("node", "ams-1"),
           "api-a": ("api", "api-a"), "api-b": ("api", "api-b"),
           "scheduler": ("scheduler", ""), "operator": ("operator", "watch")}


class Connected:
    def __init__(self, client: Client, violations: list[str]) -> None:
        self.client = client
        self.violations = violations


async def connect_as(secured: Bus, who: str) -> Connected:
    violations: list[str] = []

    async def error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    role, name = INBOXES[who]
    client = await nats.connect(
        secured.server.url, tls=bus.tls_context(secured.folders[who]), error_cb=error,
        inbox_prefix=permissions.inbox_for(role, name), allow_reconnect=False,
        connect_timeout=5)
    return Connected(client, violations)


@pytest.fixture
async def operator(secured: Bus) -> AsyncIterator[Client]:
    watcher = await connect_as(secured, "operator")
    yield watcher.client
    await watcher.client.close()


async def try_publish(secured: Bus, operator: Client, who: str, subject: str) -> bool:
    seen: list[bytes] = []

    async def got(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.data)

    watch = await operator.subscribe(subject, cb=got)
    await operator.flush()
    actor = await connect_as(secured, who)
    try:
        await actor.client.publish(subject, b"probe")
        await actor.client.flush()
        await asyncio.sleep(0.2)
    finally:
        await actor.client.close()
        await watch.unsubscribe()
    refused = any("permissions violation" in v and "publish" in v for v in actor.violations)
    assert bool(seen) != refused, (who, subject, seen, actor.violations)
    return bool(seen)


async def try_subscribe(secured: Bus, operator: Client, who: str, subject: str,
                        send_to: str) -> bool:
    actor = await connect_as(secured, who)
    seen: list[bytes] = []

    async def got(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.data)

    try:
        await actor.client.subscribe(subject, cb=got)
        await actor.client.flush()
        await asyncio.sleep(0.1)
        await operator.publish(send_to, b"probe")
        await operator.flush()
        await asyncio.sleep(0.2)
    finally:
        await actor.client.close()
    refused = any("permissions violation" in v and "subscription" in v
                  for v in actor.violations)
    assert bool(seen) != refused, (who, subject, seen, actor.violations)
    return bool(seen)


INFER_FRA_1 = subjects.infer("fra", "fra-1")

PUBLISH = [
    # who, subject, allowed
    ("fra-1", subjects.node_event("fra-1", "heartbeat"), True),
    ("fra-1", subjects.node_event("fra-2", "heartbeat"), False),  # speak for another node
    ("fra-1", subjects.attest("fra-2", "evidence"), False),
    ("fra-1", subjects.reply("fra", "api-a", "r1"), True),
    ("fra-1", subjects.reply("ams", "api-a", "r1"), False),  # another metro's payload
    ("fra-1", subjects.usage("fra"), True),
    ("fra-1", subjects.usage("ams"), False),
    ("fra-1", subjects.infer("fra", "fra-2"), False),  # send work to another node
    ("fra-1", subjects.SCHED_VIEW, False),  # pose as the scheduler
    ("fra-1", subjects.IDENTITY_REVOKED, False),
    ("fra-1", subjects.AUDIT_EVENTS, False),
    ("fra-3 enrolling", subjects.attest("fra-3", "evidence"), True),
    ("fra-3 enrolling", subjects.node_event("fra-3", "heartbeat"), False),  # not yet a node
    ("fra-3 enrolling", subjects.reply("fra", "api-a", "r1"), False),
    ("fra-3 enrolling", subjects.usage("fra"), False),
    ("api-a", INFER_FRA_1, True),
    ("api-a", subjects.cancel("ams", "ams-1"), True),
    ("api-a", subjects.node_event("fra-1", "heartbeat"), False),  # pose as a node
    ("api-a", subjects.reply("fra", "api-b", "r1"), False),  # answer for a node
    ("api-a", subjects.SCHED_VIEW, False),
    ("scheduler", subjects.SCHED_VIEW, True),
    ("scheduler", INFER_FRA_1, False),  # the scheduler never touches payloads
    ("scheduler", subjects.reply("fra", "api-a", "r1"), False),
    # The blob sweeper deletes (a meta message); it never writes a blob's bytes.
    ("scheduler", f"$O.{subjects.blob_bucket('fra')}.M.eA", True),
    ("scheduler", f"$O.{subjects.blob_bucket('fra')}.C.eA", False),
]

SUBSCRIBE = [
    # who, subscription, a subject it would match, allowed
    ("fra-1", INFER_FRA_1, INFER_FRA_1, True),
    ("fra-1", subjects.infer("fra", "fra-2"), subjects.infer("fra", "fra-2"), False),
    ("fra-1", "volt.ams.>", subjects.infer("ams", "ams-1"), False),
    ("fra-1", "volt.fra.reply.*.*", subjects.reply("fra", "api-a", "r1"), False),
    ("fra-1", ">", subjects.infer("fra", "fra-2"), False),
    ("fra-1", "_INBOX.>", "_INBOX.api.api-a.x", False),  # others' request answers
    ("fra-1", "_INBOX.node.fra-1.>", "_INBOX.node.fra-1.x", True),
    ("fra-3 enrolling", subjects.infer("fra", "fra-3"), subjects.infer("fra", "fra-3"), False),
    ("fra-3 enrolling", "_INBOX.node.fra-3.>", "_INBOX.node.fra-3.x", True),
    ("api-a", subjects.reply_wildcard("api-a"), subjects.reply("fra", "api-a", "r1"), True),
    ("api-a", subjects.reply_wildcard("api-b"), subjects.reply("fra", "api-b", "r1"), False),
    ("api-a", INFER_FRA_1, INFER_FRA_1, False),  # read prompts meant for a node
    ("api-a", subjects.SCHED_VIEW, subjects.SCHED_VIEW, True),
    ("scheduler", subjects.node_events("heartbeat"),
     subjects.node_event("fra-1", "heartbeat"), True),
    ("scheduler", "volt.fra.>", INFER_FRA_1, False),
    ("scheduler", subjects.replies_in("fra"), subjects.reply("fra", "api-a", "r1"), False),
]


@pytest.mark.parametrize(("who", "subject", "allowed"), PUBLISH,
                         ids=[f"{w} pub {s}" for w, s, _ in PUBLISH])
async def test_publish_permissions(secured: Bus, operator: Client, who: str, subject: str,
                                   allowed: bool) -> None:
    assert await try_publish(secured, operator, who, subject) is allowed


@pytest.mark.parametrize(("who", "subject", "send_to", "allowed"), SUBSCRIBE,
                         ids=[f"{w} sub {s}" for w, s, _, _ in SUBSCRIBE])
async def test_subscribe_permissions(secured: Bus, operator: Client, who: str, subject: str,
                                     send_to: str, allowed: bool) -> None:
    assert await try_subscribe(secured, operator, who, subject, send_to) is allowed


async def test_the_scheduler_answers_only_requests_it_received(secured: Bus,
                                                               operator: Client) -> None:
    scheduler = await connect_as(secured, "scheduler")
    api = await connect_as(secured, "api-a")

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"view")

    try:
        await scheduler.client.subscribe(subjects.SCHED_VIEW_GET, cb=answer)
        await scheduler.client.flush()
        reply = await api.client.request(subjects.SCHED_VIEW_GET, b"", timeout=2)
        assert reply.data == b"view"
        # ...but it may not write into an inbox on its own.
        assert not await try_publish(secured, operator, "scheduler", "_INBOX.api.api-a.x")
    finally:
        await scheduler.client.close()
        await api.client.close()


async def test_no_certificate_or_a_foreign_ca_is_refused(secured: Bus, tmp_path: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - TLS or authorization, either refuses
        await nats.connect(secured.server.url, allow_reconnect=False, connect_timeout=3)
    rogue_ca = WorkloadCA.in_folder(tmp_path / "rogue", "volt.test")
    # The rogue CA signs the very SPIFFE ID of a real node.
    folder = rogue_ca.issue("spiffe://volt.test/node/fra/fra-1").write(tmp_path / "svid")
    (tmp_path / "svid" / "bundle.pem").write_bytes(secured.authority.ca.bundle_pem)
    with pytest.raises(Exception):  # noqa: B017
        await nats.connect(secured.server.url, tls=bus.tls_context(folder.certificate.parent),
                           allow_reconnect=False, connect_timeout=3)


async def test_an_identity_the_bus_does_not_list_is_refused(secured: Bus, tmp_path: Path) -> None:
    # Signed by the right CA but never added as a bus user (a node not yet admitted).
    folder = secured.authority.ca.issue("spiffe://volt.test/node/fra/fra-9").write(
        tmp_path / "svid")
    with pytest.raises(nats.errors.Error, match="Authorization"):
        await nats.connect(secured.server.url, tls=bus.tls_context(folder.certificate.parent),
                           allow_reconnect=False, connect_timeout=3)


def test_an_operator_provisions_the_bus_with_the_cli(tmp_path: Path) -> None:
    """``volt admin bus issue`` per process, then ``volt admin bus config``: the
    server it configures admits exactly those identities, with their roles."""
    import subprocess
    import sys

    env = {"VOLT_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}

    def volt(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "volt", "admin", "bus", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    node = Path(volt("issue", "node", "--metro", "fra", "--name", "fra-7").strip())
    scheduler = Path(volt("issue", "scheduler").strip())
    enrol = Path(volt("issue", "enrol", "--metro", "ams", "--name", "ams-4").strip())
    assert enrol.name == "enrol-ams-4"
    assert not (enrol.parent / "node-ams-4").exists()  # attestation earns that one
    refused = subprocess.run([sys.executable, "-m", "volt", "admin", "bus", "issue", "node",
                              "--metro", "fra", "--name", "bad.name"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    server = NatsServer()
    config = tmp_path / "nats.conf"
    config.write_text(volt("config", "--host", "127.0.0.1", "--port", str(server.port)))
    users = {user["user"] for user in json.loads(config.read_text())["authorization"]["users"]}
    assert users == {"spiffe://volt.local/node/fra/fra-7", "spiffe://volt.local/service/scheduler",
                     "spiffe://volt.local/enrol/ams/ams-4", "spiffe://volt.local/node/ams/ams-4"}
    process = subprocess.Popen([nats_server_binary(), "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def check() -> None:
        async def connect(folder: Path, inbox: str) -> Client:
            return await bus.connect(server.url, "cli-test", svid_dir=folder,
                                     inbox_prefix=inbox, connect_timeout_s=10)

        sched = await connect(scheduler, permissions.inbox_for("scheduler", ""))
        seen: list[str] = []

        async def got(msg: nats.aio.msg.Msg) -> None:
            seen.append(msg.subject)

        await sched.subscribe(subjects.node_events("heartbeat"), cb=got)
        await sched.flush()
        agent = await connect(node, permissions.inbox_for("node", "fra-7"))
        await agent.publish(subjects.node_event("fra-7", "heartbeat"), b"hb")
        await agent.publish(subjects.node_event("fra-8", "heartbeat"), b"forged")
        await agent.flush()
        await asyncio.sleep(0.3)
        assert seen == [subjects.node_event("fra-7", "heartbeat")]
        await agent.close()
        await sched.close()

    try:
        asyncio.run(check())
    finally:
        process.terminate()
        process.wait(10)
