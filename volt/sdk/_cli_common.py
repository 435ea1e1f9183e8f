"""What every ``volt`` client command shares: the client, output (a table or
``--json``), times, durations, and errors as one line instead of a traceback."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from volt.sdk._client import Client
from volt.sdk._errors import APIStatusError, VoltError


def client_for(args: argparse.Namespace) -> Client:
    return Client(args.base_url)


def show(value: Any, args: argparse.Namespace, table: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(msgspec.to_builtins(value), indent=1))
    else:
        print(table(value))


def when(unix: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(unix)) if unix else "-"


def duration(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd])", text)
    if not match:
        raise argparse.ArgumentTypeError("use a number and s, m, h or d (e.g. 30d)")
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def guarded(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    def wrapper(args: argparse.Namespace) -> None:
        try:
            run(args)
        except APIStatusError as error:
            request = f" (request {error.request_id})" if error.request_id else ""
            sys.exit(f"volt: {error.status} {error.message}{request}")
        except VoltError as error:
            sys.exit(f"volt: {error}")

    return wrapper
