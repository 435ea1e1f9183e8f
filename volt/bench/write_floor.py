"""What the kernel alone charges for one streamed token: the relay's floor.

Whatever Volt does in Python, its API writes each client's token to that
client's socket (one SSE event, one ``write``), because at a GPU's cadence
one stream's tokens are tens of milliseconds apart. This measures that write
and nothing else: one uvloop process with ``streams`` loopback TCP clients
writes a chat-chunk-sized event to every client each ``itl_s`` (all streams in
one step, as an engine's decoding step produces them), and reports its CPU
per write, kernel time included. A reader process (not counted) drains the
sockets. On a virtual machine that number is mostly the kernel's TCP path and
the wake-up of the reader: a price per token that no user-space relay avoids.
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop

EVENT = (b'data: {"id":"chatcmpl-0123456789abcdef","object":"chat.completion.chunk",'
         b'"created":1765000000,"model":"volt-tiny","choices":[{"index":0,'
         b'"delta":{"content":" token"},"finish_reason":null}]}\n\n')
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
"""One SSE event in HTTP/1.1 chunked encoding, as the API writes it."""


async def _drain(port: int, streams: int) -> None:
    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while await reader.read(1 << 16):
            pass
        writer.close()

    await asyncio.gather(*(one() for _ in range(streams)))


async def _measure(streams: int, itl_s: float, duration_s: float) -> float:
    writers: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if len(writers) == streams:
            connected.set()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    reader = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "volt.bench.write_floor", "--drain", str(port), str(streams))
    try:
        await asyncio.wait_for(connected.wait(), 30)
        loop = asyncio.get_running_loop()
        writes = 0
        end = loop.time() + duration_s
        started = time.process_time()
        while loop.time() < end:
            for writer in writers:
                writer.transport.write(CHUNK)
            writes += len(writers)
            await asyncio.sleep(itl_s)
        cpu_s = time.process_time() - started
    finally:
        for writer in writers:
            writer.close()
        server.close()
        reader.kill()  # only a drain: nothing of it is measured
        await reader.wait()
    return cpu_s / writes * 1e6


def floor_us_per_token(streams: int, itl_s: float, duration_s: float = 5.0) -> float:
    """CPU µs of the writing process per token-sized write (see the module docstring)."""
    return round(uvloop.run(_measure(streams, itl_s, duration_s)), 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--drain"]:
        uvloop.run(_drain(int(sys.argv[2]), int(sys.argv[3])))
