"""``volt bench identity``: what identity costs per request, and the audit log at scale.

1. **Added latency per request.** In one process, against a real
   ``nats-server`` and a SQLite store: the identity pipeline every API request
   now runs — authenticate the bearer key (cached), check the route's rule,
   the key's shared limits, append the audit event (published to JetStream in
   batches by a background task, which runs in the same loop and so is
   counted in the throughput) — against what the API did before identity
   (a SHA-256 of the key and a cache lookup). p50/p99 per request and
   requests/s, at concurrency 1 and 64.
2. **Audit log at scale.** Append N events (default 1,000,000) with the
   scheduler's writer in batches, then rebuild and check the whole log from
   the store as ``volt audit verify --store`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from volt.bench.loadgen import percentile
from volt.config import load_config
from volt.identity import Identity, Role
from volt.identity.audit_log import AuditLog
from volt.identity.audit_writer import AuditWriter
from volt.identity.policy import RULES
from volt.identity.principal import Limits
from volt.identity.verify import verify_store
from volt.store import Database
from volt.up.nats_server import NatsServer
from volt.wire import AuditEvent, bus


async def _timed(step: Callable[[], Awaitable[None]], requests: int,
                 concurrency: int) -> dict[str, float]:
    samples: list[float] = []
    per_task = max(1, requests // concurrency)

    async def worker() -> None:
        for _ in range(per_task):
            started = time.perf_counter()
            await step()
            samples.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # let the others in, as requests interleave

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    samples.sort()
    return {"p50_us": percentile(samples, 50) * 1e6, "p99_us": percentile(samples, 99) * 1e6,
            "per_s": len(samples) / elapsed}


async def measure_request_path(requests: int, concurrencies: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="volt-bench-identity-") as tmp, \
            NatsServer(store_dir=Path(tmp) / "nats") as server:
        config = load_config(env={"VOLT_DATA_DIR": tmp})
        db = Database(config.store_url())
        await db.upgrade()
        identity = Identity(config, db)
        nc = await bus.connect(server.url, name="bench")
        await identity.start(nc)
        org = await identity.orgs.ensure("bench")
        header = "Bearer " + (await identity.keys.create(org.id, "bench", role=Role.OWNER)).key
        limited = "Bearer " + (await identity.keys.create(
            org.id, "limited", limits=Limits(requests_per_minute=100_000_000))).key
        rule = RULES[("POST", "/v1/chat/completions")]
        body = b'{"model": "volt-tiny", "messages": [{"role": "user", "content": "hi"}]}'

        # Before identity, the API hashed the key and looked it up in a cache.
        cache = {hashlib.sha256(header.split(" ", 1)[1].encode()).hexdigest(): object()}

        async def before() -> None:
            if cache.get(hashlib.sha256(header.split(" ", 1)[1].encode()).hexdigest()) is None:
                raise RuntimeError("not cached")

        def pipeline(authorization: str) -> Callable[[], Awaitable[None]]:
            async def step() -> None:
                principal = await identity.authenticate(authorization)
                identity.authorize(principal, rule, {})
                await identity.admit(principal)
                identity.record(request_id="req_bench", principal=principal, method="POST",
                                route="/v1/chat/completions", resources={}, status=200,
                                client="127.0.0.1", body=body, level=rule.audit)
            return step

        try:
            for warm in (before, pipeline(header), pipeline(limited)):
                await _timed(warm, 2000, 1)
            for concurrency in concurrencies:
                base = await _timed(before, requests, concurrency)
                for name, authorization in (("identity", header),
                                            ("identity + limits", limited)):
                    new = await _timed(pipeline(authorization), requests, concurrency)
                    rows.append({"path": name, "concurrency": concurrency, **new,
                                 "before_p50_us": base["p50_us"],
                                 "added_p50_us": new["p50_us"] - base["p50_us"],
                                 "added_p99_us": new["p99_us"] - base["p99_us"]})
            published_before = identity.audit.buffered
            await identity.audit.flush()
            rows.append({"path": "audit flush at the end", "concurrency": 0,
                         "events_waiting": published_before})
        finally:
            await identity.stop()
            await nc.close()
            await db.close()
    return rows


def _event(i: int) -> AuditEvent:
    return AuditEvent(event_id=f"aev_{i:012d}", time_ms=1_800_000_000_000 + i,
                      request_id=f"req_{i:012d}",
                      spiffe_id="spiffe://volt.local/org/org_bench/key/key_bench",
                      org_id="org_bench", auth_method="api_key", auth_id="key_bench",
                      method="POST", route="/v1/chat/completions", status=200,
                      client="10.1.2.3", body_sha256="ab" * 32, level="request")


async def measure_audit_log(events: int, batch: int = 2000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="volt-bench-audit-") as tmp:
        db = Database(f"sqlite+aiosqlite:///{tmp}/volt.db")
        await db.upgrade()
        key = Ed25519PrivateKey.generate()
        writer = AuditWriter(AuditLog(db), key, checkpoint_every=100_000,
                             checkpoint_interval_s=1e9)
        await writer.prepare()
        started = time.perf_counter()
        for start in range(0, events, batch):
            await writer.append([_event(i) for i in range(start, min(events, start + batch))])
        await writer.checkpoint()
        append_s = time.perf_counter() - started
        started = time.perf_counter()
        report = await verify_store(db, trusted=[key.public_key()])
        verify_s = time.perf_counter() - started
        size_mb = await asyncio.to_thread(os.path.getsize, f"{tmp}/volt.db") / 1e6
        await db.close()
    if not report.ok:
        raise RuntimeError(f"the benchmark's own log did not verify: {report.problems}")
    return {"events": events, "batch": batch, "append_s": append_s,
            "append_per_s": events / append_s, "verify_s": verify_s,
            "verify_per_s": events / verify_s, "checkpoints": report.checkpoints,
            "store_mb": size_mb}


def run_identity_bench(*, requests: int, concurrencies: list[int], audit_events: int,
                       json_path: Path | None) -> None:
    rows = asyncio.run(measure_request_path(requests, concurrencies))
    print("Identity on the request path (authenticate + rule + limits + audit), in process:")
    print(f"{'path':<20} {'conc':>5} {'p50 µs':>8} {'p99 µs':>8} {'req/s':>9} "
          f"{'before p50':>11} {'added p50':>10} {'added p99':>10}")
    for row in rows:
        if row["concurrency"]:
            print(f"{row['path']:<20} {row['concurrency']:>5} {row['p50_us']:>8.1f} "
                  f"{row['p99_us']:>8.1f} {row['per_s']:>9.0f} {row['before_p50_us']:>11.1f} "
                  f"{row['added_p50_us']:>10.1f} {row['added_p99_us']:>10.1f}")
    audit = asyncio.run(measure_audit_log(audit_events)) if audit_events else None
    if audit:
        print(f"\nAudit log, {audit['events']:,} events (SQLite, batches of {audit['batch']}): "
              f"append {audit['append_s']:.1f} s ({audit['append_per_s']:,.0f} events/s), "
              f"full verify {audit['verify_s']:.1f} s ({audit['verify_per_s']:,.0f} events/s), "
              f"{audit['checkpoints']} checkpoints, store {audit['store_mb']:.0f} MB")
    if json_path is not None:
        json_path.write_text(json.dumps({
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_path": rows, "audit_log": audit}, indent=1))
