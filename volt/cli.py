"""The ``volt`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from volt.config import ConfigError, VoltConfig, load_config

if TYPE_CHECKING:
    from volt.store import Database

T = TypeVar("T")


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> VoltConfig:
    extra: dict[str, Any] = dict(overrides or {})
    if getattr(args, "data_dir", None):
        extra["data_dir"] = str(args.data_dir)
    return load_config(args.config, overrides=extra)


def _up(args: argparse.Namespace) -> None:
    from volt.runtime import run_service
    from volt.up.command import AlreadyRunning, StartFailed, run_up

    overrides: dict[str, Any] = {}
    if args.api_port is not None:
        overrides.setdefault("api", {})["port"] = args.api_port
    if args.api_workers is not None:
        overrides.setdefault("api", {})["workers"] = args.api_workers
    if args.nats_port is not None:
        overrides["nats"] = {"port": args.nats_port}
    if not args.no_embeddings:
        from volt.agent.engine.embedding_server import EMBEDDING_MODEL_ID

        overrides["agent"] = {"embedding_model": EMBEDDING_MODEL_ID}
    config = _config(args, overrides)
    failure: list[str] = []

    async def main() -> None:
        try:
            await run_up(config, config_path=args.config, software_tpm=not args.no_tpm)
        except (AlreadyRunning, StartFailed) as exc:
            failure.append(str(exc))

    run_service(main)
    if failure:
        sys.exit(f"volt up: {failure[0]}")
    print("Volt stopped.")


def _service(name: str) -> Any:
    def run(args: argparse.Namespace) -> None:
        from volt.logs import configure_logging
        from volt.runtime import run_service

        config = _config(args)
        configure_logging(name, config.log_level)
        if name == "api":
            from volt.control_api.main import run_api as main
        elif name == "scheduler":
            from volt.scheduler.main import run_scheduler as main
        elif name == "redfish-proxy":
            from volt.vault.proxy_main import run_redfish_proxy as main
        else:
            from volt.agent.main import run_agent as main
        run_service(lambda: main(config))

    return run


def _db_upgrade(args: argparse.Namespace) -> None:
    from volt.store import Database

    config = _config(args)

    async def main() -> None:
        db = Database(config.store_url())
        try:
            await db.upgrade()
        finally:
            await db.close()

    asyncio.run(main())
    print("store is at the newest migration")


def _store(args: argparse.Namespace, work: Callable[[VoltConfig, Database], Awaitable[T]]) -> T:
    """Run ``work`` on the store of this machine's configuration (operator commands)."""
    from volt.store import Database

    config = _config(args)

    async def main() -> T:
        db = Database(config.store_url())
        try:
            await db.check_current()
            return await work(config, db)
        finally:
            await db.close()

    return asyncio.run(main())


def _orgs_create(args: argparse.Namespace) -> None:
    from volt.identity.orgs import Orgs

    async def work(config: VoltConfig, db: Database) -> str:
        return (await Orgs(db).ensure(args.name)).id

    print(_store(args, work))


def _admin_keys_create(args: argparse.Namespace) -> None:
    from volt.identity.orgs import Orgs
    from volt.identity.principal import Role
    from volt.up.bootstrap import api_keys

    async def work(config: VoltConfig, db: Database) -> str:
        org = await Orgs(db).ensure(args.org)
        issued = await api_keys(config, db).create(
            org.id, args.name, mode=args.mode, role=Role(args.role),
            created_by="operator (volt admin keys create)")
        return issued.key

    print(_store(args, work))
    print("Store this key now: Volt keeps only a keyed hash of it and cannot show it again.",
          file=sys.stderr)


def _bus_authority(args: argparse.Namespace) -> Any:
    from volt.identity.bus_authority import BusAuthority

    config = _config(args)
    return BusAuthority(config.data_path / "bus", config.secrets_path(),
                        config.identity.trust_domain)


def _admin_bus_issue(args: argparse.Namespace) -> None:
    authority = _bus_authority(args)
    try:
        if args.role in ("node", "enrol"):
            if not args.metro or not args.name:
                raise SystemExit(f"volt admin bus issue {args.role}: give --metro and --name")
            issue = authority.node if args.role == "node" else authority.enrolling_node
            folder = issue(args.metro, args.name)
        elif args.role in ("api", "operator"):
            if not args.name:
                raise SystemExit(f"volt admin bus issue {args.role}: give --name")
            folder = getattr(authority, args.role)(args.name)
        else:
            folder = authority.scheduler()
    except ValueError as exc:
        raise SystemExit(f"volt admin bus issue: {exc}") from None
    print(folder)
    print("Give this folder to that process as nats.svid_dir (VOLT_NATS_SVID_DIR), then "
          "rewrite the bus's configuration (volt admin bus config) and reload nats-server.",
          file=sys.stderr)


def _admin_bus_config(args: argparse.Namespace) -> None:
    authority = _bus_authority(args)
    print(authority.config_text(host=args.host, port=args.port, store_dir=args.jetstream),
          end="")


def _orgs_set_catalog(args: argparse.Namespace) -> None:
    from volt.identity.orgs import Orgs
    from volt.store import Catalog

    def limit(text: str | None) -> frozenset[str] | None:
        if text is None or text == "*":
            return None
        return frozenset(part.strip() for part in text.split(",") if part.strip())

    catalog = Catalog(models=limit(args.models), metros=limit(args.metros),
                      tiers=limit(args.tiers))

    async def work(config: VoltConfig, db: Database) -> None:
        await Orgs(db).set_catalog(args.name, catalog)

    _store(args, work)
    print(f"{args.name}: {catalog.to_json() or 'may use every model, metro and tier'}")
    print("API replicas pick this up within api.auth_cache_s.", file=sys.stderr)


def _orgs_set_gpu_quota(args: argparse.Namespace) -> None:
    from volt.identity.orgs import Orgs

    gpus = None if args.gpus == "default" else int(args.gpus)

    async def work(config: VoltConfig, db: Database) -> int:
        orgs = Orgs(db)
        org = await orgs.by_name(args.name)
        if org is None:
            raise SystemExit(f"volt admin orgs set-gpu-quota: no org {args.name}")
        await orgs.set_gpu_quota(org.id, gpus)
        return config.forge.default_gpu_quota

    default = _store(args, work)
    print(f"{args.name}: leases may hold {gpus if gpus is not None else default} GPUs at once"
          + (" (the default)" if gpus is None else ""))


def _racks_add(args: argparse.Namespace) -> None:
    import time

    from volt.store.resources import ResourceStore
    from volt.vault.credentials import CredentialBox
    from volt.vault.inventory import RegistrationError, parse_rack, register
    from volt.vault.redfish import connect_bmc

    try:
        entry = parse_rack(Path(args.file).read_bytes())
    except (RegistrationError, OSError) as exc:
        sys.exit(f"volt admin racks add: {args.file}: {exc}")

    async def work(config: VoltConfig, db: Database) -> str:
        record = await register(
            ResourceStore(db), CredentialBox.from_config(config), entry, now=time.time(),
            connect=lambda url, user, password, verify: connect_bmc(
                url, user, password, verify, timeout_s=config.vault.bmc_timeout_s),
            registered_by="operator (volt admin racks add)")
        nodes = record.spec["nodes"]
        return (f"rack {record.id}: {len(nodes)} nodes, "
                f"{sum(int(n['gpus']) for n in nodes)} GPUs, available in {entry.metro} "
                f"(BMCs checked: {', '.join(n['name'] for n in nodes)})")

    try:
        print(_store(args, work))
    except RegistrationError as exc:
        sys.exit(f"volt admin racks add: {exc}")


def _racks_list(args: argparse.Namespace) -> None:
    from volt.store.resources import ResourceStore
    from volt.vault.inventory import KIND
    from volt.vault.states import RackState

    async def work(config: VoltConfig, db: Database) -> list[str]:
        racks = await ResourceStore(db).in_states(KIND, [s.value for s in RackState])
        return [f"{r.id:<16} {r.state:<13} {r.spec['metro']:<6} {r.spec['tier']:<10} "
                f"{len(r.spec['nodes']):>5} {r.org_id or '-':<20} {r.reason}"
                for r in sorted(racks, key=lambda r: r.id)]

    print(f"{'ID':<16} {'STATE':<13} {'METRO':<6} {'TIER':<10} {'NODES':>5} {'ORG':<20} REASON")
    print("\n".join(_store(args, work)))


def _racks_move(event_name: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        import time

        from volt.store.resources import ResourceStore
        from volt.vault.inventory import RegistrationError, operator_transition
        from volt.vault.states import RackEvent

        event = RackEvent(event_name)

        async def work(config: VoltConfig, db: Database) -> str:
            record = await operator_transition(
                ResourceStore(db), args.rack_id, event,
                args.reason or f"{event.value} by an operator", now=time.time())
            return f"rack {record.id}: {record.state}"

        try:
            print(_store(args, work))
        except RegistrationError as exc:
            sys.exit(f"volt admin racks {args.racks}: {exc}")

    return run


def _gpus(args: argparse.Namespace) -> None:
    """What the agent would report: one full NVML read (timed), XIDs watched for a while."""
    import json
    import threading
    import time

    import msgspec

    from volt.agent.telemetry import NvmlTelemetry, detect, health_problems

    telemetry = detect()
    started = time.perf_counter()
    gpus = telemetry.read()
    read_ms = (time.perf_counter() - started) * 1000
    if args.watch_xids and isinstance(telemetry, NvmlTelemetry):
        stop = threading.Event()
        watcher = threading.Thread(target=telemetry.watch_xids, args=(stop,))
        watcher.start()
        stop.wait(args.watch_xids)
        stop.set()
        watcher.join()
        gpus = telemetry.read()
    print(json.dumps({
        "read_ms": round(read_ms, 1), "gpus": msgspec.to_builtins(gpus),
        "health": {gpu.index: health_problems(gpu) for gpu in gpus},
    }, indent=1))


def _model_build(args: argparse.Namespace) -> None:
    from volt.agent.engine.tiny_model import build

    config = _config(args)
    print(build(args.out or config.model_dir()))


def _bench(args: argparse.Namespace) -> None:
    from volt.bench.cli import run_bench

    run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volt", description="Volt: a sovereign GPU cloud.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML config file (or VOLT_CONFIG)")
    common.add_argument("--data-dir", type=Path, help="data folder (or VOLT_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", parents=[common], help="run a whole Volt on this machine")
    up.add_argument("--api-port", type=int, help="API port (0: a free port); default 8080")
    up.add_argument("--api-workers", type=int,
                    help="API processes on the API port (api.workers; default 1)")
    up.add_argument("--nats-port", type=int, help="embedded NATS port (default: a free port)")
    up.add_argument("--no-tpm", action="store_true",
                    help="do not give the node a software TPM (swtpm): it runs not_attested")
    up.add_argument("--no-embeddings", action="store_true",
                    help="do not serve the embedding model (all-minilm-l6-v2)")
    up.set_defaults(func=_up)

    for name, text in (("api", "run the API"), ("scheduler", "run the scheduler"),
                       ("agent", "run a node agent"),
                       ("redfish-proxy", "run Vault's Redfish proxy for tenants")):
        commands.add_parser(name, parents=[common], help=text).set_defaults(func=_service(name))

    db = commands.add_parser("db", help="state store").add_subparsers(dest="db", required=True)
    db.add_parser("upgrade", parents=[common], help="apply migrations").set_defaults(
        func=_db_upgrade
    )

    admin = commands.add_parser(
        "admin", help="operator commands on this machine's store (orgs, first keys, racks)"
    ).add_subparsers(dest="admin", required=True)
    orgs = admin.add_parser("orgs", help="organizations").add_subparsers(
        dest="orgs", required=True)
    org_create = orgs.add_parser("create", parents=[common], help="create an org; prints its id")
    org_create.add_argument("name")
    org_create.set_defaults(func=_orgs_create)
    catalog = orgs.add_parser(
        "set-catalog", parents=[common],
        help="set what an org may use (comma-separated lists; '*' or omitted: everything)",
    )
    catalog.add_argument("name")
    catalog.add_argument("--models")
    catalog.add_argument("--metros")
    catalog.add_argument("--tiers")
    catalog.set_defaults(func=_orgs_set_catalog)
    quota = orgs.add_parser("set-gpu-quota", parents=[common],
                            help="how many GPUs an org's Forge leases may hold at once")
    quota.add_argument("name")
    quota.add_argument("gpus", help="a number, or 'default' (forge.default_gpu_quota)")
    quota.set_defaults(func=_orgs_set_gpu_quota)
    racks = admin.add_parser("racks", help="Vault's bare-metal racks").add_subparsers(
        dest="racks", required=True)
    racks_add = racks.add_parser(
        "add", parents=[common],
        help="register a rack from a TOML file (every BMC is checked first)")
    racks_add.add_argument("file")
    racks_add.set_defaults(func=_racks_add)
    racks.add_parser("list", parents=[common], help="every rack, its state and holder") \
        .set_defaults(func=_racks_list)
    for name, event, text in (
            ("maintain", "maintain", "take an available rack out of service"),
            ("repair", "repaired", "send a rack in maintenance back to cleaning")):
        move = racks.add_parser(name, parents=[common], help=text)
        move.add_argument("rack_id")
        move.add_argument("--reason", default="")
        move.set_defaults(func=_racks_move(event))
    admin_keys = admin.add_parser("keys", help="API keys").add_subparsers(
        dest="admin_keys", required=True)
    admin_create = admin_keys.add_parser(
        "create", parents=[common], help="issue a key for an org (created if new); prints it")
    admin_create.add_argument("--org", required=True)
    admin_create.add_argument("--name", default="operator")
    admin_create.add_argument("--role", choices=("viewer", "member", "admin", "owner"),
                              default="owner")
    admin_create.add_argument("--mode", choices=("live", "test"), default="live")
    admin_create.set_defaults(func=_admin_keys_create)

    admin_bus = admin.add_parser(
        "bus", help="the secured bus: SVIDs from Volt's workload CA, nats-server's users"
    ).add_subparsers(dest="admin_bus", required=True)
    bus_issue = admin_bus.add_parser(
        "issue", parents=[common],
        help="issue a process its X.509-SVID and admit it to the bus; prints its folder")
    bus_issue.add_argument(
        "role", choices=("enrol", "node", "api", "scheduler", "operator"),
        help="enrol: a node with a TPM, which earns its node SVID by attestation; "
             "node: one without (development)")
    bus_issue.add_argument("--name", help="node id, API replica id or operator name")
    bus_issue.add_argument("--metro", help="a node's metro")
    bus_issue.set_defaults(func=_admin_bus_issue)
    bus_config = admin_bus.add_parser(
        "config", parents=[common],
        help="print nats-server's configuration for every admitted identity")
    bus_config.add_argument("--host", default="0.0.0.0")
    bus_config.add_argument("--port", type=int, default=4222)
    bus_config.add_argument("--jetstream", type=Path, metavar="DIR",
                            help="JetStream's store folder")
    bus_config.set_defaults(func=_admin_bus_config)

    from volt.sdk.cli import add_client_commands

    add_client_commands(commands, common)

    gpus = commands.add_parser(
        "gpus", help="read this host's GPUs as the agent does (NVML), as JSON")
    gpus.add_argument("--watch-xids", type=float, default=0.0, metavar="SECONDS",
                      help="also watch for XID events this long")
    gpus.set_defaults(func=_gpus)

    model = commands.add_parser("model", help="the tiny CPU model").add_subparsers(
        dest="model", required=True
    )
    build = model.add_parser("build", parents=[common], help="build volt-tiny")
    build.add_argument("--out", type=Path)
    build.set_defaults(func=_model_build)

    from volt.bench.cli import add_bench_parser

    add_bench_parser(commands, _bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as exc:
        sys.exit(f"volt: configuration error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
