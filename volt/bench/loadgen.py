"""A small OpenAI-compatible load generator (closed loop: N clients back to back).

It talks to anything that speaks ``/v1/chat/completions``: Volt's API over
TCP, or an engine over its Unix socket. For streams it records the time to
the first content token and checks the stream ended with ``[DONE]``. It uses
``volt.http1`` so that the instrument costs far less CPU than what it
measures: on a 2-core machine the load generator shares the cores with
everything under test.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from volt.http1 import Http1Client, HttpError


@dataclass(frozen=True, slots=True)
class Sample:
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    gaps_s: tuple[float, ...] = ()
    """Streams: the time between consecutive arrivals that carried tokens (ITL
    as the client sees it; tokens that arrive together count as one arrival)."""


@dataclass
class Target:
    """Where requests go: a base URL (``http://host:port/v1``), optionally over a
    Unix socket (then the URL's host only names the server)."""

    name: str
    base_url: str
    api_key: str | None = None
    unix_socket: Path | None = None

    def client(self) -> tuple[Http1Client, str]:
        """A client for this target and the path prefix of its base URL."""
        url = urlsplit(self.base_url)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if self.unix_socket is not None:
            client = Http1Client(host=url.hostname or "localhost",
                                 unix_socket=self.unix_socket, headers=headers)
        else:
            client = Http1Client(host=url.hostname or "127.0.0.1", port=url.port or 80,
                                 headers=headers)
        return client, url.path.rstrip("/")


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def failures(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    @property
    def rps(self) -> float:
        return len(self.ok) / self.elapsed_s if self.elapsed_s else 0.0


def chat_body(model: str, tokens: int, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": model, "max_tokens": tokens, "stream": stream,
        "messages": [{"role": "user", "content": "Measure the overhead, not the model."}],
    }
    return json.dumps(body).encode()


async def _one(http: Http1Client, path: str, body: bytes, stream: bool) -> Sample:
    started = time.perf_counter()
    try:
        async with await http.request("POST", path, body) as response:
            if response.status != 200 or not stream:
                await response.read()
                return Sample(response.status == 200, time.perf_counter() - started)
            ttft = None
            tail = b""
            gaps: list[float] = []
            last = 0.0
            async for data in response.chunks():
                if b'"content"' in data:
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = now - started
                    else:
                        gaps.append(now - last)
                    last = now
                tail = (tail + data)[-64:]
            return Sample(b"[DONE]" in tail, time.perf_counter() - started, ttft, tuple(gaps))
    except (HttpError, OSError):
        return Sample(False, time.perf_counter() - started)


async def closed_loop(
    target: Target, body: bytes, *, stream: bool, concurrency: int,
    requests: int | None = None, duration_s: float | None = None, warmup_s: float = 0.5,
) -> Run:
    """``concurrency`` clients, each sending its next request when the last returns."""
    http, prefix = target.client()
    path = f"{prefix}/chat/completions"
    run = Run()
    try:
        warm_until = time.perf_counter() + warmup_s
        while time.perf_counter() < warm_until:
            await asyncio.gather(*(_one(http, path, body, stream) for _ in range(concurrency)))
        remaining = [requests] if requests is not None else None
        stop_at = time.perf_counter() + duration_s if duration_s is not None else None

        async def client() -> None:
            while True:
                if remaining is not None:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                elif stop_at is not None and time.perf_counter() >= stop_at:
                    return
                run.samples.append(await _one(http, path, body, stream))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        run.elapsed_s = time.perf_counter() - started
    finally:
        http.close()
    return run


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
