"""Vault's tests: real Redfish BMCs (sushy-emulator, one per node) and a boot
image served over HTTP for their virtual media."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator

import pytest

from volt.up.nats_server import free_port

TALOS = "v1.11.5"


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


@pytest.fixture(scope="session")
def image_url(image_server: str) -> str:
    return f"{image_server}/{TALOS}/metal-amd64.iso"
