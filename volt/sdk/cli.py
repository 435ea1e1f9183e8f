"""The ``volt`` commands a person runs against a Volt API, on the SDK:
``login``, ``logout``, ``whoami``, ``keys``, ``usage``, ``audit verify``,
``forge`` (availability, leases, kubeconfigs), ``vault`` (racks, attestation).

They find the API and the credential as the SDK does (``--base-url`` or
``VOLT_BASE_URL``; ``VOLT_API_KEY`` or the ``volt login`` tokens). Errors are
printed as one line with the API's request id, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import msgspec

from volt.sdk._cli_common import client_for as _client
from volt.sdk._cli_common import duration as _duration
from volt.sdk._cli_common import guarded as _guarded
from volt.sdk._cli_common import show as _print
from volt.sdk._cli_common import when as _when
from volt.sdk._credentials import credentials_path
from volt.sdk.finetune_cli import add_finetune_commands
from volt.sdk.vault_cli import add_vault_commands


def _login(args: argparse.Namespace) -> None:
    from volt.sdk.login import device_login

    tokens = device_login(args.base_url, scope=args.scope)
    print(f"Signed in to {tokens.base_url} (scopes: {tokens.scope}). "
          f"Tokens saved to {credentials_path()}.")


def _logout(args: argparse.Namespace) -> None:
    path = credentials_path()
    path.unlink(missing_ok=True)
    print(f"Signed out ({path} removed).")


def _whoami(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        me = volt.me()
    _print(me, args, lambda m: (f"{m.spiffe_id}\norg {m.org_name} ({m.org_id}), role {m.role}, "
                                f"scopes {' '.join(m.scopes)}, via {m.auth_method}"))


def _key_row(k: Any) -> str:
    state = "revoked" if k.revoked_at else ("expires " + _when(k.expires_at)
                                           if k.expires_at else "active")
    return (f"{k.id:<18} {k.name[:24]:<24} {k.mode:<4} {k.role:<6} {','.join(k.scopes):<10} "
            f"{_when(k.last_used_at):<16} {state}")


def _keys_list(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        keys = list(volt.keys.iterate())
    if args.json:
        print(json.dumps([msgspec.to_builtins(k) for k in keys], indent=1))
        return
    print(f"{'ID':<18} {'NAME':<24} {'MODE':<4} {'ROLE':<6} {'SCOPES':<10} {'LAST USED':<16} STATE")
    for key in keys:
        print(_key_row(key))


def _keys_create(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        key = volt.keys.create(
            args.name, scopes=args.scopes.split(","), mode=args.mode, role=args.role,
            expires_at=int(time.time()) + args.expires_in if args.expires_in else None,
            requests_per_minute=args.rpm, tokens_per_minute=args.tpm)
    if args.json:
        print(json.dumps(msgspec.to_builtins(key), indent=1))
        return
    print(key.key)
    print(f"Created {key.id} ({key.mode}, {key.role}, {','.join(key.scopes)}). Store the key "
          "now: Volt keeps only a keyed hash and cannot show it again.", file=sys.stderr)


def _keys_get(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        key = volt.keys.get(args.key_id)
    _print(key, args, _key_row)


def _keys_revoke(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        key = volt.keys.revoke(args.key_id)
    _print(key, args, lambda k: f"Revoked {k.id} ({k.name}): it stops working on every API "
                                "replica within a second.")


def _usage(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        report = volt.usage(start=args.start, end=args.end,
                            group_by=args.group_by.split(",") if args.group_by else None)

    def table(r: Any) -> str:
        groups = list(r.group_by)
        head = " ".join(f"{g.upper():<20}" for g in groups)
        lines = [f"{head} {'REQUESTS':>9} {'PROMPT':>10} {'COMPLETION':>10} {'CACHED':>9}"]
        for e in r.data:
            keys = " ".join(f"{getattr(e, g) or '-'!s:<20}" for g in groups)
            lines.append(f"{keys} {e.requests:>9} {e.prompt_tokens:>10} "
                         f"{e.completion_tokens:>10} {e.cached_tokens:>9}")
        return "\n".join(lines)

    _print(report, args, table)


def _audit_verify(args: argparse.Namespace) -> None:
    if args.store:
        _audit_verify_store(args)
        return
    from volt.sdk.audit_verify import verify

    with _client(args) as volt:
        report = verify(volt)
    if args.json:
        print(json.dumps(report.__dict__ | {"ok": report.ok}, indent=1))
    else:
        pinned = " (signing key pinned on this first check)" if report.pinned_now else ""
        since = (f", consistent with the {report.consistent_from}-event log seen before"
                 if report.consistent_from is not None else "")
        print(f"Checkpoint of {report.tree_size} events: signature good{pinned}{since}.\n"
              f"{report.events_checked} of your events proven included; "
              f"{report.events_pending} newer than the checkpoint.")
        for problem in report.problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
    if not report.ok:
        sys.exit(1)


def _audit_verify_store(args: argparse.Namespace) -> None:
    import asyncio

    from volt.config import load_config
    from volt.identity.keyring import Keyring
    from volt.identity.verify import verify_store
    from volt.store import Database

    config = load_config(args.config, overrides={"data_dir": str(args.data_dir)}
                         if args.data_dir else None)
    trusted = [Keyring(config.secrets_path()).audit_signing_key().public_key()]

    async def main() -> Any:
        db = Database(config.store_url())
        try:
            return await verify_store(db, trusted=trusted)
        finally:
            await db.close()

    started = time.perf_counter()
    report = asyncio.run(main())
    elapsed = time.perf_counter() - started
    print(f"{report.events} events, {report.checkpoints} checkpoints rebuilt and checked "
          f"in {elapsed:.1f} s.")
    for problem in report.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if not report.ok:
        sys.exit(1)


def _lease_table(leases: Any) -> str:
    rows = [f"{'ID':<20} {'STATE':<13} {'GPUS':>4} {'MODEL':<8} {'METRO':<6} {'ENDS':<16} NODES"]
    for lease in leases:
        nodes = ",".join(n.node_id for n in lease.nodes) or "-"
        rows.append(f"{lease.id:<20} {lease.state:<13} {lease.gpu_count:>4} "
                    f"{lease.gpu_model:<8} {lease.metro:<6} {_when(lease.ends_at):<16} {nodes}")
    return "\n".join(rows)


def _forge_availability(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        answer = volt.forge.availability(metro=args.metro, tier=args.tier,
                                         gpu_model=args.gpu_model)

    def table(value: Any) -> str:
        rows = [f"{'METRO':<6} {'TIER':<10} {'MODEL':<8} {'FREE':>5} {'TOTAL':>5} "
                f"{'NODE':>5} {'NVLINK':>6} {'RACK':>5} {'$/GPU-H':>8}"]
        for o in value.data:
            price = f"{o.price_per_gpu_hour:.2f}" if o.price_per_gpu_hour is not None else "-"
            rows.append(f"{o.metro:<6} {o.tier:<10} {o.gpu_model:<8} {o.free:>5} {o.total:>5} "
                        f"{o.largest_lease.on_node:>5} {o.largest_lease.in_nvlink_domain:>6} "
                        f"{o.largest_lease.in_rack:>5} {price:>8}")
        return "\n".join(rows)

    _print(answer, args, table)


def _forge_create(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        lease = volt.forge.create(args.gpu_model, args.gpus, args.metro, tier=args.tier,
                                  duration_s=args.duration,
                                  egress_cidrs=args.egress.split(",") if args.egress else None)
        while args.wait and lease.state in ("pending", "provisioning"):
            print(f"{lease.id}: {lease.state}...", file=sys.stderr)
            time.sleep(1)
            lease = volt.forge.get(lease.id)
    _print(lease, args, lambda v: _lease_table([v]))


def _forge_list(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        page = volt.forge.list(limit=args.limit, state=args.state)
    _print(page, args, lambda v: _lease_table(v.data))


def _forge_get(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        lease = volt.forge.get(args.lease_id)
    _print(lease, args, lambda v: _lease_table([v]) + (f"\nreason: {v.reason}" if v.reason
                                                       else ""))


def _forge_terminate(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        lease = volt.forge.terminate(args.lease_id)
    _print(lease, args, lambda v: _lease_table([v]))


def _forge_kubeconfig(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        minted = volt.forge.kubeconfig(args.lease_id, ttl_s=args.ttl)
    if args.json:
        print(json.dumps(msgspec.to_builtins(minted), indent=1))
        return
    # The file itself on stdout (volt forge kubeconfig LEASE > kubeconfig);
    # what it is, on stderr.
    print(f"kubeconfig {minted.id} for namespace {minted.namespace}, valid until "
          f"{_when(minted.expires_at)} UTC", file=sys.stderr)
    sys.stdout.write(minted.kubeconfig)


def _forge_revoke(args: argparse.Namespace) -> None:
    with _client(args) as volt:
        lease = volt.forge.revoke_kubeconfig(args.lease_id, args.kubeconfig_id)
    _print(lease, args, lambda v: f"revoked {args.kubeconfig_id} of {v.id}")


def add_client_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    client = argparse.ArgumentParser(add_help=False, parents=[common])
    client.add_argument("--base-url", help="the API (or VOLT_BASE_URL; default "
                                           "http://127.0.0.1:8080)")
    client.add_argument("--json", action="store_true", help="print JSON")

    login = commands.add_parser("login", parents=[client],
                                help="sign in with the device flow (a browser approves)")
    login.add_argument("--scope", default="read write")
    login.set_defaults(func=_guarded(_login))
    commands.add_parser("logout", parents=[client], help="forget the saved sign-in") \
        .set_defaults(func=_logout)
    commands.add_parser("whoami", parents=[client], help="who the API sees") \
        .set_defaults(func=_guarded(_whoami))

    keys = commands.add_parser("keys", help="your org's API keys").add_subparsers(
        dest="keys", required=True)
    keys.add_parser("list", parents=[client], help="list keys").set_defaults(
        func=_guarded(_keys_list))
    create = keys.add_parser("create", parents=[client], help="create a key (shown once)")
    create.add_argument("name")
    create.add_argument("--scopes", default="read,write")
    create.add_argument("--mode", choices=("live", "test"), default="live")
    create.add_argument("--role", choices=("viewer", "member", "admin", "owner"),
                        default="member")
    create.add_argument("--expires-in", type=_duration, help="e.g. 90d")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.set_defaults(func=_guarded(_keys_create))
    get = keys.add_parser("get", parents=[client], help="show a key")
    get.add_argument("key_id")
    get.set_defaults(func=_guarded(_keys_get))
    revoke = keys.add_parser("revoke", parents=[client], help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_guarded(_keys_revoke))

    usage = commands.add_parser("usage", parents=[client], help="your org's token usage")
    usage.add_argument("--start")
    usage.add_argument("--end")
    usage.add_argument("--group-by", help="model,day,metro,tier,key")
    usage.set_defaults(func=_guarded(_usage))

    forge = commands.add_parser("forge", help="GPU leases").add_subparsers(
        dest="forge", required=True)
    avail = forge.add_parser("availability", parents=[client],
                             help="free GPUs and the largest lease placeable now")
    avail.add_argument("--metro")
    avail.add_argument("--tier")
    avail.add_argument("--gpu-model")
    avail.set_defaults(func=_guarded(_forge_availability))
    lease = forge.add_parser("lease", help="leases").add_subparsers(dest="lease",
                                                                    required=True)
    lease_create = lease.add_parser("create", parents=[client], help="lease GPUs")
    lease_create.add_argument("gpu_model", help="e.g. H100")
    lease_create.add_argument("gpus", type=int)
    lease_create.add_argument("--metro", required=True)
    lease_create.add_argument("--tier")
    lease_create.add_argument("--duration", type=_duration, required=True, help="e.g. 8h")
    lease_create.add_argument("--egress", help="comma-separated CIDRs pods may reach")
    lease_create.add_argument("--wait", action="store_true", help="until it is active")
    lease_create.set_defaults(func=_guarded(_forge_create))
    lease_list = lease.add_parser("list", parents=[client], help="list leases")
    lease_list.add_argument("--state")
    lease_list.add_argument("--limit", type=int, default=20)
    lease_list.set_defaults(func=_guarded(_forge_list))
    for name, func, text in (("get", _forge_get, "show a lease"),
                             ("terminate", _forge_terminate, "end a lease now")):
        sub = lease.add_parser(name, parents=[client], help=text)
        sub.add_argument("lease_id")
        sub.set_defaults(func=_guarded(func))
    kubeconfig = forge.add_parser("kubeconfig", parents=[client],
                                  help="mint a kubeconfig (volt forge kubeconfig L > kubeconfig)")
    kubeconfig.add_argument("lease_id")
    kubeconfig.add_argument("--ttl", type=_duration, help="e.g. 1h (at least 10m)")
    kubeconfig.set_defaults(func=_guarded(_forge_kubeconfig))
    revoke_kc = forge.add_parser("revoke-kubeconfig", parents=[client],
                                 help="revoke one minted kubeconfig")
    revoke_kc.add_argument("lease_id")
    revoke_kc.add_argument("kubeconfig_id")
    revoke_kc.set_defaults(func=_guarded(_forge_revoke))

    add_vault_commands(commands, client)
    add_finetune_commands(commands, client)

    audit = commands.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit", required=True)
    verify = audit.add_parser("verify", parents=[client],
                              help="prove your org's events are in the signed log")
    verify.add_argument("--store", action="store_true",
                        help="operators: rebuild the whole log from the store instead")
    verify.set_defaults(func=_guarded(_audit_verify))
