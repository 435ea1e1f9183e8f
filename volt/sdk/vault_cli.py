"""``volt vault``: a tenant's racks — reserve (watching provisioning node by
node), list, show, release (watching the cleaning), and the attestation
report, checked offline against the verifier's published keys."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import msgspec

from volt.sdk._cli_common import client_for, duration, guarded, show, when
from volt.vault.report import ReportInvalid, verify_report

SETTLED = ("ready", "failed", "available", "maintenance")
"""States a rack rests in (``--wait`` stops there)."""


def _rack_table(racks: Any) -> str:
    rows = [f"{'ID':<16} {'STATE':<13} {'METRO':<6} {'TIER':<10} {'GPUS':>5} {'MODEL':<8} "
            f"{'NODES':>5} {'READY':<16}"]
    for rack in racks:
        rows.append(f"{rack.id:<16} {rack.state:<13} {rack.metro:<6} {rack.tier:<10} "
                    f"{rack.gpu_count:>5} {rack.gpu_model:<8} {len(rack.nodes):>5} "
                    f"{when(rack.ready_at):<16}")
    return "\n".join(rows)


def _rack_detail(rack: Any) -> str:
    lines = [_rack_table([rack])]
    if rack.reason:
        lines.append(f"reason: {rack.reason}")
    lines.append(f"\n{'NODE':<20} {'STATE':<13} {'STEP':<14} {'NOW':<14} {'TRIES':>5} ERROR")
    for node in rack.nodes:
        lines.append(f"{node.name:<20} {node.state:<13} {node.step or '-':<14} "
                     f"{node.running or '-':<14} {node.attempts:>5} {node.last_error or '-'}")
        for step in node.cleaning:
            lines.append(f"{'':<20} cleaning: {step.step}: {step.outcome}")
    return "\n".join(lines)


def _progress(rack: Any) -> str:
    done = sum(1 for n in rack.nodes if n.state in ("booted", "cleaned"))
    busy = ", ".join(f"{n.name} {n.running}" for n in rack.nodes if n.running)
    return f"{rack.id}: {rack.state}, {done}/{len(rack.nodes)} nodes done" + (
        f" ({busy})" if busy else "")


def _watch(volt: Any, rack: Any, until: tuple[str, ...]) -> Any:
    last = ""
    while rack.state not in until:
        line = _progress(rack)
        if line != last:
            print(line, file=sys.stderr)
            last = line
        time.sleep(1)
        try:
            rack = volt.vault.get(rack.id)
        except Exception:
            if "available" in until:
                break  # cleaned and handed back: no longer the org's to see
            raise
    return rack


def _reserve(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        rack = volt.vault.reserve(args.metro, tier=args.tier, gpu_model=args.gpu_model,
                                  nodes=args.nodes, talos_version=args.talos_version)
        if args.wait:
            rack = _watch(volt, rack, SETTLED)
    show(rack, args, _rack_detail)


def _list(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        page = volt.vault.list(limit=args.limit, state=args.state)
    show(page, args, lambda v: _rack_table(v.data))


def _get(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        rack = volt.vault.get(args.rack_id)
    show(rack, args, _rack_detail)


def _release(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        rack = volt.vault.release(args.rack_id)
        if args.wait:
            rack = _watch(volt, rack, SETTLED)
    show(rack, args, _rack_detail)


def _attestation(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        if args.keys:
            with open(args.keys) as handle:
                jwks = json.load(handle)
        else:
            jwks = None
        report = volt.vault.attestation(args.rack_id)
        if args.verify:
            keys = jwks if jwks is not None else msgspec.to_builtins(volt.vault.verifier_keys())
            try:
                verify_report(report.jws, keys)
            except ReportInvalid as exc:
                sys.exit(f"volt: {exc}")
            print("signature verified against the verifier's keys", file=sys.stderr)

    def table(value: Any) -> str:
        rows = [f"rack {value.rack_id} ({value.state}), generated {when(value.generated_at)} "
                f"UTC: {'every node passed' if value.all_passed else 'NOT every node passed'}",
                f"{'NODE':<20} {'STATE':<13} {'POLICY':<20} QUOTED"]
        for node in value.nodes:
            verdict = (node.verdict or {}).get("verdict") or {}
            quoted = when(int(verdict["time_ms"]) // 1000) if verdict else "-"
            rows.append(f"{node.node:<20} {node.state:<13} {verdict.get('policy', '-'):<20} "
                        f"{quoted}")
        return "\n".join(rows)

    show(report, args, table)


def _talos_config(args: argparse.Namespace) -> None:
    if args.format == "yaml" and not args.node:
        sys.exit("volt: --format yaml is one node's configuration: give --node")
    with client_for(args) as volt:
        if args.json:
            show(volt.vault.talos_config(args.rack_id, node=args.node), args, str)
            return
        if args.node and args.format == "yaml":
            sys.stdout.write(volt.vault.talos_files(args.rack_id, node=args.node,
                                                    format="yaml").decode())
            return
        archive = volt.vault.talos_files(args.rack_id, node=args.node)
    folder = Path(args.out or f"{args.rack_id}-talos")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            path = folder / member.name
            path.touch(mode=0o600)
            path.write_bytes(handle.read())
            print(path, file=sys.stderr)
    print(f"talosctl apply-config --insecure -n <node address> -f {folder}/<node>.yaml, then "
          f"talosctl --talosconfig {folder}/talosconfig bootstrap", file=sys.stderr)


def _redfish_credential(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        minted = volt.vault.redfish_credential(args.rack_id, ttl_s=args.ttl)
    show(minted, args, lambda m: (
        f"endpoint  {m.endpoint}/redfish/v1/\nusername  {m.username}\npassword  {m.password}\n"
        f"expires   {when(m.expires_at)} UTC ({m.id})\n"
        "Store the password now: Volt keeps only a keyed hash of it."))


def _revoke_redfish_credential(args: argparse.Namespace) -> None:
    with client_for(args) as volt:
        volt.vault.revoke_redfish_credential(args.rack_id, args.credential_id)
    print(f"revoked {args.credential_id} of {args.rack_id}")


def add_vault_commands(commands: Any, client: argparse.ArgumentParser) -> None:
    vault = commands.add_parser("vault", help="bare-metal racks").add_subparsers(
        dest="vault", required=True)
    racks = vault.add_parser("racks", help="racks").add_subparsers(dest="racks", required=True)
    reserve = racks.add_parser("reserve", parents=[client], help="reserve a whole rack")
    reserve.add_argument("--metro", required=True)
    reserve.add_argument("--tier")
    reserve.add_argument("--gpu-model", help="e.g. H100")
    reserve.add_argument("--nodes", type=int, help="at least this many nodes")
    reserve.add_argument("--talos-version", help="e.g. v1.12.1")
    reserve.add_argument("--wait", action="store_true",
                         help="show each node's progress until the rack is ready or failed")
    reserve.set_defaults(func=guarded(_reserve))
    listing = racks.add_parser("list", parents=[client], help="list your racks")
    listing.add_argument("--state")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=guarded(_list))
    get = racks.add_parser("get", parents=[client], help="a rack, node by node")
    get.add_argument("rack_id")
    get.set_defaults(func=guarded(_get))
    release = racks.add_parser("release", parents=[client],
                               help="give a rack back (its nodes are cleaned first)")
    release.add_argument("rack_id")
    release.add_argument("--wait", action="store_true", help="until it is cleaned")
    release.set_defaults(func=guarded(_release))
    attestation = vault.add_parser("attestation", parents=[client],
                                   help="the rack's signed measured-boot report")
    attestation.add_argument("rack_id")
    attestation.add_argument("--verify", action="store_true",
                             help="check the report's signature (against --keys, or the "
                                  "keys the API publishes)")
    attestation.add_argument("--keys", help="a JWKS file kept from before")
    attestation.set_defaults(func=guarded(_attestation))
    credential = vault.add_parser(
        "redfish-credentials", parents=[client],
        help="mint a username and password for Volt's Redfish proxy (the rack's systems only)")
    credential.add_argument("rack_id")
    credential.add_argument("--ttl", type=duration, help="e.g. 8h (the default)")
    credential.set_defaults(func=guarded(_redfish_credential))
    revoke = vault.add_parser("revoke-redfish-credentials", parents=[client],
                              help="revoke a Redfish proxy credential")
    revoke.add_argument("rack_id")
    revoke.add_argument("credential_id")
    revoke.set_defaults(func=guarded(_revoke_redfish_credential))
    talos = vault.add_parser("talos-config", parents=[client],
                             help="the rack's Talos machine configs, talosconfig and secrets "
                                  "(written to a folder, 0600)")
    talos.add_argument("rack_id")
    talos.add_argument("--node", help="only this node's")
    talos.add_argument("--format", choices=("files", "yaml"), default="files",
                       help="yaml: the node's config on stdout (with --node)")
    talos.add_argument("--out", help="the folder (default: RACK-talos)")
    talos.set_defaults(func=guarded(_talos_config))
