from __future__ import annotations

import asyncio
import functools
import http.server
import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from volt.agent.engine.tiny_model import MODEL_ID, ensure_built
from volt.store import Database
from volt.up.nats_server import NatsServer, free_port

if TYPE_CHECKING:
    from support.kube import KubeControlPlane

# One torch thread: two threads swing wildly on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """volt-tiny, built once per test session."""
    return ensure_built(tmp_path_factory.mktemp("models") / MODEL_ID)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite store (``tests/store`` runs PostgreSQL too, with its own)."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'volt.db'}")
    await database.upgrade()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server on a free port, JetStream on."""
    with NatsServer(store_dir=tmp_path / "nats") as server:
        yield server


POSTGRES_ENV = "VOLT_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards.

    Synchronous on purpose, so that async fixtures can depend on it.
    """
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(
            f"{POSTGRES_ENV} is not set (e.g. postgresql+asyncpg://postgres@127.0.0.1/postgres)"
        )
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"volt_test_{secrets.token_hex(4)}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeControlPlane]:
    """A real Kubernetes control plane (etcd, kube-apiserver,
    kube-controller-manager, kube-scheduler), once per test session."""
    import shutil

    from support.kube import KubeControlPlane, etcd_binary
    from support.requirements import require

    if shutil.which("go") is None:
        require("Go is not installed: the Kubernetes binaries are built from source")
    if etcd_binary() is None:
        require("etcd is not installed (Debian package etcd-server)")
    with KubeControlPlane(tmp_path_factory.mktemp("kube")) as control_plane:
        yield control_plane


TALOS = "v1.12.1"
"""The Talos version the test boot image is served for (Vault's default)."""


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A base URL serving ``/<talos version>/metal-amd64.iso`` (the BMCs fetch it
    when it is inserted as virtual media)."""
    folder = tmp_path_factory.mktemp("images")
    (folder / TALOS).mkdir()
    (folder / TALOS / "metal-amd64.iso").write_bytes(b"\0" * 4096)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
