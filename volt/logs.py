"""Structured logging: one JSON object per line on stderr.

Only metadata is ever logged (ids, sizes, timings, node names). Never pass a
prompt, a completion, an API key or a password to a logger; there is a test
that scans every service's log output for a known prompt and key.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import msgspec

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode("utf-8", "replace")


def configure_logging(service: str, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("VOLT_LOG_LEVEL", "info")).upper())
    # Chatty libraries stay at warning: hypercorn's access log would record paths
    # and client addresses for every request, at a cost, and tells us nothing new.
    for name in ("hypercorn.access", "uvicorn.access", "asyncio", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # transformers' batching logger prints plain text through its own handler.
    batching = logging.getLogger("ContinuousBatchingLogger")
    batching.handlers[:] = []
    batching.setLevel(logging.WARNING)
