"""``volt bench``: Volt's benchmarks."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_bench_parser(commands: Any, run: Callable[[argparse.Namespace], None]) -> None:
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench", required=True
    )
    overhead = bench.add_parser("overhead", help="the latency and throughput Volt adds")
    overhead.set_defaults(func=run)


def run_bench(args: argparse.Namespace) -> None:
    raise SystemExit("not yet")
