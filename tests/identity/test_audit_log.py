"""The audit log: events from an API replica through a real JetStream into the
Merkle tree in the store, proofs that verify, and every kind of tampering
caught by the operator's full check."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update

from volt.identity import merkle
from volt.identity.audit import AuditRecorder, build_event
from volt.identity.audit_format import leaf_bytes
from volt.identity.audit_log import AuditLog
from volt.identity.audit_writer import AuditWriter
from volt.identity.policy import AuditLevel
from volt.identity.tables import AuditCheckpoint, AuditEventRow
from volt.identity.verify import verify_store
from volt.store import Database
from volt.up.nats_server import NatsServer
from volt.wire import AuditEvent, bus


def event(i: int, org: str = "org_a") -> AuditEvent:
    return AuditEvent(event_id=f"aev_{i:06d}", time_ms=1_800_000_000_000 + i,
                      request_id=f"req_{i}", spiffe_id=f"spiffe://volt.test/org/{org}/key/k",
                      org_id=org, auth_method="api_key", auth_id="k", method="GET",
                      route="/v1/models", status=200, client="127.0.0.1")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


async def filled(db: Database, key: Ed25519PrivateKey, count: int = 100) -> AuditWriter:
    writer = AuditWriter(AuditLog(db), key, checkpoint_every=25)
    await writer.prepare()
    for start in range(0, count, 10):
        await writer.append([event(i, "org_a" if i % 3 else "org_b")
                             for i in range(start, start + 10)])
    if writer.uncheckpointed():
        await writer.checkpoint()
    return writer


async def test_appends_are_idempotent_and_proofs_verify(db: Database,
                                                        key: Ed25519PrivateKey) -> None:
    writer = await filled(db, key)
    assert await writer.append([event(5), event(6)]) == 0  # a redelivered batch
    log = AuditLog(db)
    checkpoint = await log.latest_checkpoint()
    assert checkpoint is not None
    assert checkpoint.tree_size == 100
    events = await log.events(org_id="org_b", limit=1000)
    assert [e.seq for e in events] == list(range(0, 100, 3))
    proofs = await log.inclusion_proofs([e.seq for e in events], checkpoint.tree_size)
    for stored, proof in zip(events, proofs, strict=True):
        assert stored.body == leaf_bytes(stored.event)
        assert merkle.verify_inclusion(stored.seq, 100, merkle.leaf_hash(stored.body), proof,
                                       checkpoint.root_hash)
    consistency = await log.consistency_proof(25, 100)
    assert merkle.verify_consistency(25, 100, await log.root(25), checkpoint.root_hash,
                                     consistency)
    report = await verify_store(db, trusted=[key.public_key()])
    assert report.ok, report.problems
    assert (report.events, report.checkpoints) == (100, 4)  # at 30, 60, 90 and 100

    # A restarted writer continues the same tree.
    again = AuditWriter(AuditLog(db), key, checkpoint_every=25)
    await again.prepare()
    await again.append([event(100)])
    await again.checkpoint()
    assert (await verify_store(db, trusted=[key.public_key()])).ok


async def _tampered(db: Database, key: Ed25519PrivateKey, change: str) -> list[str]:
    await filled(db, key)
    async with db.session() as session, session.begin():
        if change == "edit":
            forged = leaf_bytes(event(40)).replace(b"/v1/models", b"/v1/modelz")
            await session.execute(update(AuditEventRow).where(AuditEventRow.seq == 40)
                                  .values(body=forged))
        elif change == "delete":
            await session.execute(delete(AuditEventRow).where(AuditEventRow.seq == 99))
        elif change == "delete-middle":
            await session.execute(delete(AuditEventRow).where(AuditEventRow.seq == 50))
        elif change == "reorder":
            rows = dict((await session.execute(select(AuditEventRow.seq, AuditEventRow.body)
                                               .where(AuditEventRow.seq.in_([7, 8])))).all())
            await session.execute(update(AuditEventRow).where(AuditEventRow.seq == 7)
                                  .values(body=rows[8]))
            await session.execute(update(AuditEventRow).where(AuditEventRow.seq == 8)
                                  .values(body=rows[7]))
        elif change == "forge-checkpoint":
            await session.execute(update(AuditCheckpoint)
                                  .where(AuditCheckpoint.tree_size == 100)
                                  .values(root_hash=b"\x01" * 32))
    if change == "resign":  # someone with store access re-signs with their own key
        await AuditLog(db).sign_checkpoint(await AuditLog(db).frontier(),
                                           Ed25519PrivateKey.generate())
    return (await verify_store(db, trusted=[key.public_key()])).problems


@pytest.mark.parametrize(("change", "found"), [
    ("edit", "no longer hash"), ("delete", "missing"), ("delete-middle", "missing"),
    ("reorder", "no longer hash"), ("forge-checkpoint", "bad signature"),
])
async def test_every_tampering_is_caught(db: Database, key: Ed25519PrivateKey, change: str,
                                         found: str) -> None:
    problems = await _tampered(db, key, change)
    assert any(found in p for p in problems), problems


async def test_a_checkpoint_signed_by_another_key_is_caught(db: Database,
                                                            key: Ed25519PrivateKey) -> None:
    await filled(db, key)
    writer = AuditWriter(AuditLog(db), Ed25519PrivateKey.generate())
    await writer.prepare()
    await writer.append([event(1000)])
    await writer.checkpoint()
    problems = (await verify_store(db, trusted=[key.public_key()])).problems
    assert any("bad signature" in p for p in problems), problems


async def test_events_flow_from_a_replica_through_jetstream_and_a_clean_stop_loses_none(
    db: Database, key: Ed25519PrivateKey, nats_server: NatsServer,
) -> None:
    api = await bus.connect(nats_server.url, name="api")
    scheduler = await bus.connect(nats_server.url, name="scheduler")
    recorder = AuditRecorder(flush_interval_s=10)  # only the stop flushes
    await recorder.start(api)
    writer = AuditWriter(AuditLog(db), key, checkpoint_every=10_000, checkpoint_interval_s=0.1)
    running = asyncio.create_task(writer.run(scheduler))
    try:
        for i in range(250):
            recorder.record(build_event(
                request_id=f"req_{i}", principal=None, method="POST",
                route="/v1/chat/completions", resources={}, status=401, client="10.0.0.1",
                body=b'{"secret prompt": 1}', level=AuditLevel.REQUEST))
        await recorder.close()
        assert recorder.buffered == 0
        async with asyncio.timeout(20):
            while await AuditLog(db).size() < 250 or writer.uncheckpointed():
                await asyncio.sleep(0.05)
        stored = await AuditLog(db).events(org_id=None, limit=1000)
        assert [e.event.request_id for e in stored] == [f"req_{i}" for i in range(250)]
        assert all(e.event.body_sha256 and b"secret prompt" not in e.body for e in stored)
        assert (await verify_store(db, trusted=[key.public_key()])).ok
    finally:
        running.cancel()
        await api.close()
        await scheduler.close()
