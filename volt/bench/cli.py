"""``volt bench``: Volt's benchmarks (printed tables; ``--json PATH`` for the figures)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _concurrencies(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies are positive integers")
    return values


def add_bench_parser(commands: Any, run: Callable[[argparse.Namespace], None]) -> None:
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench", required=True, metavar="BENCH"
    )
    overhead = bench.add_parser(
        "overhead", help="the latency and throughput Volt adds over its engine"
    )
    overhead.add_argument("--tokens", type=int, default=64, help="tokens per response")
    overhead.add_argument("--concurrency", type=_concurrencies, default=[1, 32, 64],
                          help="comma-separated (default 1,32,64)")
    overhead.add_argument("--requests", type=int, default=2000,
                          help="requests at concurrency 1 (default 2000)")
    overhead.add_argument("--duration", type=float, default=8.0,
                          help="seconds per run above concurrency 1 (default 8)")
    overhead.add_argument("--api-server", choices=["hypercorn", "uvicorn", "both"],
                          default="both", help="which API server(s) to measure (default both)")
    overhead.add_argument("--json", type=Path, help="also write the figures here")
    overhead.set_defaults(func=run)

    placement = bench.add_parser(
        "placement", help="routing from the scheduler's view vs asking it per request"
    )
    placement.add_argument("--nodes", type=int, default=50)
    placement.add_argument("--decisions", type=int, default=20000)
    placement.add_argument("--concurrency", type=int, default=64)
    placement.add_argument("--json", type=Path, help="also write the figures here")
    placement.set_defaults(func=run)


def run_bench(args: argparse.Namespace) -> None:
    if args.bench == "overhead":
        from volt.bench.overhead import run_overhead

        servers = ("hypercorn", "uvicorn") if args.api_server == "both" else (args.api_server,)
        run_overhead(tokens=args.tokens, concurrencies=args.concurrency,
                     sequential_requests=args.requests, duration_s=args.duration,
                     json_path=args.json, api_servers=servers)
    elif args.bench == "placement":
        from volt.bench.placement import run_placement

        run_placement(nodes=args.nodes, decisions=args.decisions,
                      concurrency=args.concurrency, json_path=args.json)
