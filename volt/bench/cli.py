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


def _rates(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("a comma-separated list of numbers") from exc
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("rates are positive numbers (requests per second)")
    return values


def _lengths(text: str) -> Any:
    from volt.bench.serve import LengthError, Lengths

    try:
        return Lengths.parse(text)
    except LengthError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_sweep_options(parser: argparse.ArgumentParser, *, requests: int,
                       concurrency: list[int] | None) -> None:
    parser.add_argument("--rate", type=_rates,
                        help="Poisson arrivals: comma-separated requests/s, one point each")
    parser.add_argument("--concurrency", type=_concurrencies, default=concurrency,
                      help="clients back to back: comma-separated, one point each"
                      + (f" (default {','.join(map(str, concurrency))})" if concurrency else ""))
    parser.add_argument("--model", default="volt-tiny")
    parser.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    parser.add_argument("--requests", type=int, default=requests,
                        help=f"requests per point (default {requests}; with --concurrency at "
                        "least 4 per client)")
    parser.add_argument("--prompt-tokens", type=_lengths, default="64",
                        help="N, uniform:LO:HI or normal:MEAN:SD (default 64)")
    parser.add_argument("--output-tokens", type=_lengths, default="64",
                        help="max_tokens per request, same forms (default 64)")
    parser.add_argument("--slo-ttft-ms", type=float)
    parser.add_argument("--slo-tpot-ms", type=float)
    parser.add_argument("--slo-e2e-ms", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")


def _sweep(args: argparse.Namespace) -> Any:
    from volt.bench.serve import Slo, Sweep

    slos = (args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms)
    if args.rate is None and not args.concurrency:
        raise SystemExit("volt bench: give --rate or --concurrency")
    return Sweep(
        model=args.model, endpoint=args.endpoint, rates=tuple(args.rate or ()),
        concurrencies=tuple(args.concurrency or ()),
        requests=args.requests, prompt=args.prompt_tokens, output=args.output_tokens,
        slo=Slo(*slos) if any(v is not None for v in slos) else None, seed=args.seed,
    )


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

    relay = bench.add_parser(
        "relay", help="CPU per relayed token and added TTFT/ITL, with the paced engine")
    relay.add_argument("--tokens", type=int, default=50, help="tokens per stream")
    relay.add_argument("--concurrency", type=_concurrencies, default=[64, 256, 1024],
                       help="comma-separated concurrent streams (default 64,256,1024)")
    relay.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    relay.add_argument("--ttft-ms", type=float, default=100.0)
    relay.add_argument("--itl-ms", type=float, default=20.0)
    relay.add_argument("--stream-interval-ms", type=float, default=3.0,
                       help="the agent's agent.stream_interval_ms (0: one message per chunk)")
    relay.add_argument("--schedule", choices=["batch", "stream"], default="batch",
                       help="the paced engine's agent.paced_schedule: one decoding step for "
                            "all streams, as a GPU (default), or a clock per stream")
    relay.add_argument("--json", type=Path, help="also write the figures here")
    relay.set_defaults(func=run)

    identity = bench.add_parser(
        "identity", help="what authentication, limits and audit add per request; the audit log "
                         "at a million events")
    identity.add_argument("--requests", type=int, default=20000, help="per point")
    identity.add_argument("--concurrency", type=_concurrencies, default=[1, 64])
    identity.add_argument("--audit-events", type=int, default=1_000_000,
                          help="events to append and verify (0: skip)")
    identity.add_argument("--json", type=Path, help="also write the figures here")
    identity.set_defaults(func=run)

    attestation = bench.add_parser(
        "attestation", help="quote verifications per second per core, event-log replay included")
    attestation.add_argument("--verifications", type=int, default=5000)
    attestation.add_argument("--json", type=Path, help="also write the figures here")
    attestation.set_defaults(func=run)

    placement = bench.add_parser(
        "placement", help="routing from the scheduler's view vs asking it per request"
    )
    placement.add_argument("--nodes", type=int, default=50)
    placement.add_argument("--decisions", type=int, default=20000)
    placement.add_argument("--concurrency", type=int, default=64)
    placement.add_argument("--json", type=Path, help="also write the figures here")
    placement.set_defaults(func=run)

    sched = bench.add_parser(
        "sched", help="lease placements per second and fragmentation on a simulated fleet")
    sched.add_argument("--nodes", default="1000,10000",
                       help="comma-separated fleet sizes (8 GPUs per node)")
    sched.add_argument("--operations", type=int, default=100000)
    sched.add_argument("--seed", type=int, default=1)
    sched.add_argument("--json", type=Path, help="also write the figures here")
    sched.set_defaults(func=run)

    vault = bench.add_parser(
        "vault", help="a rack from reservation to ready (emulated BMCs, one per node) and the "
                      "Redfish proxy's cost per call")
    vault.add_argument("--nodes", default="8,32", help="comma-separated rack sizes")
    vault.add_argument("--calls", type=int, default=500,
                       help="Redfish calls timed direct and through the proxy")
    vault.add_argument("--json", type=Path, help="also write the figures here")
    vault.set_defaults(func=run)

    finetune = bench.add_parser(
        "finetune", help="LoRA training throughput, succeeded-to-served time, and the cost of "
                         "serving N adapters on one engine")
    finetune.add_argument("--examples", type=int, default=256)
    finetune.add_argument("--epochs", type=int, default=2)
    finetune.add_argument("--batch-size", type=int, default=8)
    finetune.add_argument("--adapters", default="1,8,32", help="comma-separated counts")
    finetune.add_argument("--requests", type=int, default=96, help="per adapter count")
    finetune.add_argument("--concurrency", type=int, default=8)
    finetune.add_argument("--max-tokens", type=int, default=32)
    finetune.add_argument("--json", type=Path, help="also write the figures here")
    finetune.set_defaults(func=run)
    prefix = bench.add_parser(
        "prefix", help="prefix-aware routing vs least-load and round-robin: cache hits, TTFT, "
                       "throughput, on several pods")
    prefix.add_argument("--pods", type=int, default=3)
    prefix.add_argument("--policies", default="prefix_aware,least_load,round_robin,prefix_only",
                        help="comma-separated api.routing policies, each behind its own API")
    prefix.add_argument("--json", type=Path, help="also write the figures here")
    prefix.set_defaults(func=run)

    serve = bench.add_parser(
        "serve", help="OpenAI-compatible serving benchmark against any base URL",
    )
    serve.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    serve.add_argument("--api-key", help="bearer key (default: $OPENAI_API_KEY, if set)")
    serve.add_argument("--unix-socket", type=Path, help="reach the server over this socket")
    serve.add_argument("--name", default="target", help="the target's name in the results")
    _add_sweep_options(serve, requests=200, concurrency=None)
    serve.set_defaults(func=run)

    compare = bench.add_parser(
        "compare", help="the engine vs Volt vs LiteLLM's proxy, one sweep, one run",
    )
    _add_sweep_options(compare, requests=1500, concurrency=[1, 16, 64])
    compare.add_argument("--no-litellm", action="store_true", help="engine and Volt only")
    compare.add_argument("--engine", choices=["instant", "vllm"], default="instant",
                         help="instant: the CPU engine without a model, behind engine, Volt "
                         "and LiteLLM (default); vllm: vllm serve with the real model, "
                         "directly and behind Volt")
    compare.add_argument("--vllm-python", type=Path, default=Path(".venv-vllm/bin/python"),
                         help="with --engine vllm: the Python of vLLM's virtual environment")
    compare.add_argument("--vllm-args", default="--dtype float32 --max-model-len 1024",
                         help="with --engine vllm: extra vllm serve arguments")
    compare.set_defaults(func=run)


def run_bench(args: argparse.Namespace) -> None:
    if args.bench == "overhead":
        from volt.bench.overhead import run_overhead

        servers = ("hypercorn", "uvicorn") if args.api_server == "both" else (args.api_server,)
        run_overhead(tokens=args.tokens, concurrencies=args.concurrency,
                     sequential_requests=args.requests, duration_s=args.duration,
                     json_path=args.json, api_servers=servers)
    elif args.bench == "relay":
        from volt.bench.relay import run_relay

        run_relay(tokens=args.tokens, concurrencies=args.concurrency, duration_s=args.duration,
                  ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, json_path=args.json,
                  stream_interval_ms=args.stream_interval_ms, schedule=args.schedule)
    elif args.bench == "identity":
        from volt.bench.identity import run_identity_bench

        run_identity_bench(requests=args.requests, concurrencies=args.concurrency,
                           audit_events=args.audit_events, json_path=args.json)
    elif args.bench == "attestation":
        from volt.bench.attestation import run_attestation_bench

        run_attestation_bench(verifications=args.verifications, json_path=args.json)
    elif args.bench == "placement":
        from volt.bench.placement import run_placement

        run_placement(nodes=args.nodes, decisions=args.decisions,
                      concurrency=args.concurrency, json_path=args.json)
    elif args.bench == "finetune":
        from volt.bench.finetune import run_finetune_bench

        run_finetune_bench(examples=args.examples, epochs=args.epochs,
                           batch_size=args.batch_size,
                           counts=[int(n) for n in args.adapters.split(",")],
                           requests=args.requests, concurrency=args.concurrency,
                           max_tokens=args.max_tokens, json_path=args.json)
    elif args.bench == "vault":
        from volt.bench.vault import run_vault_bench

        run_vault_bench(sizes=[int(n) for n in args.nodes.split(",")], calls=args.calls,
                        json_path=args.json)
    elif args.bench == "sched":
        from volt.bench.sched import run_sched

        run_sched(fleets=[int(n) for n in args.nodes.split(",")], operations=args.operations,
                  seed=args.seed, json_path=args.json)
    elif args.bench == "prefix":
        from volt.bench.prefix import run_prefix
        from volt.placement import ROUTING

        policies = tuple(p for p in args.policies.split(",") if p)
        if unknown := [p for p in policies if p not in ROUTING]:
            raise SystemExit(f"volt bench prefix: unknown routing policies {unknown}; "
                             f"choose from {', '.join(ROUTING)}")
        run_prefix(pods=args.pods, policies=policies, json_path=args.json)
    elif args.bench == "serve":
        import os

        from volt.bench.loadgen import Target
        from volt.bench.serve import run_serve

        key = args.api_key or os.environ.get("OPENAI_API_KEY")
        target = Target(args.name, args.base_url, api_key=key, unix_socket=args.unix_socket)
        run_serve([target], _sweep(args), json_path=args.json, plot_path=args.plot)
    elif args.bench == "compare" and args.engine == "vllm":
        from volt.bench.compare import run_vllm_compare

        if not args.vllm_python.exists():
            raise SystemExit(f"volt bench compare: {args.vllm_python} does not exist "
                             "(./dev test creates .venv-vllm; or pass --vllm-python)")
        # absolute(), not resolve(): a venv's python is a symlink out of the venv.
        run_vllm_compare(_sweep(args), vllm_python=args.vllm_python.absolute(),
                         vllm_args=args.vllm_args, json_path=args.json, plot_path=args.plot)
    elif args.bench == "compare":
        from volt.bench.compare import run_compare

        run_compare(_sweep(args), json_path=args.json, plot_path=args.plot,
                    with_litellm=not args.no_litellm)
