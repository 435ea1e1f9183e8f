"""``volt bench vault``: how long a rack takes from reservation to ready, and
what the Redfish proxy adds to a call.

Each node is its own emulated BMC (``sushy-emulator``, one process per node,
``bmcs.py``), whose power changes land 1-11 s after they are asked — the
"hardware" dominates, so the figure that matters is how close the rack's
time is to its slowest node's (nodes in parallel) rather than to the sum of
them (nodes one after another). The rack is registered (its BMCs checked),
reserved, and driven by Vault's writer on a SQLite store, in process.

Then, on the ready rack, the same Redfish call (``GET /Systems/<node>``) is
timed straight to a BMC and through the proxy (its HTTP server on loopback,
Basic auth checked against the keyed hash, the BMC's password opened, the
answer rewritten), back to back on one kept-alive connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from volt.bench.bmcs import Bmc
from volt.bench.loadgen import percentile
from volt.bench.report import header, progress, write
from volt.config import VaultSettings
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.vault.credentials import CredentialBox
from volt.vault.inventory import KIND, NodeEntry, RackEntry, register
from volt.vault.racks import Vault
from volt.vault.redfish_proxy import Proxy, create_proxy_app
from volt.vault.states import RackState
from volt.wire import RackReserve, RedfishCredentialMint

TALOS = "v1.12.1"


@contextlib.contextmanager
def _image_server(folder: Path) -> Iterator[str]:
    (folder / TALOS).mkdir(parents=True)
    (folder / TALOS / "metal-amd64.iso").write_bytes(b"\0" * 4096)
    class Silent(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Silent, directory=str(folder))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass

    server = Quiet(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def _start_bmcs(folder: Path, names: list[str]) -> dict[str, Bmc]:
    bmcs = {name: Bmc(folder / name, systems=[name]).launch() for name in names}
    for bmc in bmcs.values():
        bmc.wait_ready()
    return bmcs


async def _rack_to_ready(folder: Path, size: int, images: str, box: CredentialBox,
                         proxy_key: bytes) -> tuple[dict[str, Any], Vault, ResourceStore,
                                                    Database, dict[str, Bmc]]:
    rack_id = f"bench-{size}"
    names = [f"{rack_id}-n{i}" for i in range(1, size + 1)]
    progress(f"rack of {size}: starting {size} emulated BMCs")
    bmcs = _start_bmcs(folder / "bmcs", names)  # in this thread: they die with it
    db = Database(f"sqlite+aiosqlite:///{folder / 'volt.db'}")
    await db.upgrade()
    store = ResourceStore(db)
    await register(store, box, RackEntry(id=rack_id, metro="bench", cleaning="metadata", nodes=[
        NodeEntry(name=name, gpu_model="H100", gpus=8, bmc_url=bmc.url,
                  bmc_username=bmc.username, bmc_password=bmc.password)
        for name, bmc in bmcs.items()]), now=time.time())
    settings = VaultSettings(image_url=images + "/{talos_version}/metal-amd64.iso",
                             talos_versions=[TALOS], require_attestation=False,
                             power_timeout_s=60.0, reconcile_interval_s=0.2)
    vault = Vault(store, settings, box, proxy_key=proxy_key)
    runner = asyncio.create_task(vault.run())
    progress(f"rack of {size}: reserved, provisioning")
    started = time.time()
    await vault.reserve(RackReserve(org_id="bench", metro="bench"))
    while True:
        record = await store.get(KIND, rack_id)
        assert record is not None
        if record.state in (RackState.READY, RackState.FAILED):
            break
        await asyncio.sleep(0.05)
    rack_s = time.time() - started
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    if record.state != RackState.READY:
        raise RuntimeError(f"rack of {size} failed: {record.reason}")
    booted = [float(n["booted_at"]) - started for n in record.status["nodes"].values()]
    result = {"nodes": size, "rack_s": round(rack_s, 2),
              "slowest_node_s": round(max(booted), 2),
              "mean_node_s": round(statistics.mean(booted), 2),
              "sum_of_nodes_s": round(sum(booted), 1),
              "rack_over_slowest": round(rack_s / max(booted), 2)}
    progress(f"rack of {size}: ready in {rack_s:.1f} s (slowest node {max(booted):.1f} s, "
             f"sum {sum(booted):.0f} s)")
    return result, vault, store, db, bmcs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _proxy_overhead(vault: Vault, store: ResourceStore, box: CredentialBox,
                          proxy_key: bytes, bmcs: dict[str, Bmc], calls: int) -> dict[str, Any]:
    import uvicorn

    rack_id = next(iter(bmcs)).rsplit("-n", 1)[0]
    minted = await vault.mint_credential(RedfishCredentialMint(org_id="bench",
                                                               rack_id=rack_id))
    proxy = Proxy(store, box, proxy_key)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_proxy_app(proxy), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on",
                                           access_log=False))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.05)
    name, bmc = next(iter(bmcs.items()))
    direct_url = f"{bmc.url}/redfish/v1/Systems/{bmc.systems[name]}"
    proxied_url = f"http://127.0.0.1:{port}/redfish/v1/Systems/{name}"

    async def timed(url: str, auth: tuple[str, str]) -> list[float]:
        async with httpx.AsyncClient(auth=auth, timeout=30) as client:
            for _ in range(10):  # warm: connections, caches
                (await client.get(url)).raise_for_status()
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                response = await client.get(url)
                samples.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
            return samples

    progress(f"proxy: {calls} calls direct, then {calls} through the proxy")
    direct = await timed(direct_url, (bmc.username, bmc.password))
    proxied = await timed(proxied_url, (minted.username, minted.password))
    server.should_exit = True
    await serving
    await proxy.close()

    def summary(samples: list[float]) -> dict[str, float]:
        return {"p50_ms": round(percentile(samples, 50), 2),
                "p99_ms": round(percentile(samples, 99), 2)}

    d, p = summary(direct), summary(proxied)
    return {"call": "GET /redfish/v1/Systems/<node>", "calls": calls, "direct": d,
            "proxied": p, "added_p50_ms": round(p["p50_ms"] - d["p50_ms"], 2),
            "added_p99_ms": round(p["p99_ms"] - d["p99_ms"], 2)}


async def _run(sizes: list[int], calls: int) -> dict[str, Any]:
    box = CredentialBox(b"\1" * 32)
    proxy_key = b"\2" * 32
    racks: list[dict[str, Any]] = []
    overhead: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="volt-bench-vault-") as tmp, \
            _image_server(Path(tmp) / "images") as images:
        for index, size in enumerate(sizes):
            folder = Path(tmp) / f"rack-{size}"
            result, vault, store, db, bmcs = await _rack_to_ready(folder, size, images, box,
                                                                  proxy_key)
            try:
                racks.append(result)
                if index == 0:
                    overhead = await _proxy_overhead(vault, store, box, proxy_key, bmcs, calls)
            finally:
                await vault.stop()
                await db.close()
                for bmc in bmcs.values():
                    bmc.stop()
    return {"racks": racks, "proxy": overhead}


def run_vault_bench(*, sizes: list[int], calls: int, json_path: Path | None) -> None:
    figures = asyncio.run(_run(sizes, calls))
    report = header("vault", {"sizes": sizes, "calls": calls,
                              "bmc": "sushy-emulator, fake driver (power lands 1-11 s later)"})
    report |= figures
    print(f"{'NODES':>5} {'RACK S':>7} {'SLOWEST NODE S':>15} {'MEAN NODE S':>12} "
          f"{'SUM OF NODES S':>15} {'RACK/SLOWEST':>13}")
    for rack in figures["racks"]:
        print(f"{rack['nodes']:>5} {rack['rack_s']:>7} {rack['slowest_node_s']:>15} "
              f"{rack['mean_node_s']:>12} {rack['sum_of_nodes_s']:>15} "
              f"{rack['rack_over_slowest']:>13}")
    proxy = figures["proxy"]
    if proxy:
        print(f"\n{proxy['call']}, {proxy['calls']} calls: direct p50 "
              f"{proxy['direct']['p50_ms']} ms / p99 {proxy['direct']['p99_ms']} ms; through "
              f"the proxy p50 {proxy['proxied']['p50_ms']} ms / p99 "
              f"{proxy['proxied']['p99_ms']} ms (added p50 {proxy['added_p50_ms']} ms, "
              f"p99 {proxy['added_p99_ms']} ms)")
    write(report, json_path)
