"""Asking the scheduler: the one way a route changes a lease or a rack.

The scheduler is the single writer of Forge's leases and Vault's racks; a
route sends it a typed command over NATS request/reply on its family's
subject and turns a refusal into the client's error (OpenAI's envelope, the
status the scheduler chose). Reads come from the store, where the scheduler
keeps every resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from quart import Response

from volt.control_api.errors import InvalidRequest, Refused, ServiceUnavailable
from volt.wire import FamilyDecoder, WireMessage, encode

COMMAND_TIMEOUT_S = 30.0
"""Minting a kubeconfig waits on Kubernetes (a Secret, then a TokenRequest)."""
_encoder = msgspec.json.Encoder()


def json_response(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status=status, content_type="application/json")


class SchedulerCommands:
    def __init__(self, nc: Client, subject: str, family: FamilyDecoder[Any],
                 refused: type[Any], what: str) -> None:
        self.nc = nc
        self.subject = subject
        self.family = family
        self.refused = refused
        """The family's refusal message (``code``, ``status``, ``message``, ``param``)."""
        self.what = what
        """What to check before trying again (``lease``, ``rack``)."""

    async def ask(self, command: WireMessage) -> WireMessage:
        try:
            msg = await self.nc.request(self.subject, encode(command), timeout=COMMAND_TIMEOUT_S)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            raise ServiceUnavailable(
                f"The scheduler did not answer; nothing may have changed. Check the "
                f"{self.what} list before trying again.", retry_after_s=5) from exc
        answer = self.family.decode(msg.data)
        if isinstance(answer, self.refused):
            raise Refused(answer.status, answer.code, answer.message, answer.param)
        result: WireMessage = answer
        return result


def known_query(args: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    """A 400 for a query parameter the route does not take (a typo such as
    ``?gpu=H100`` would otherwise silently mean "everything")."""
    for name in args:
        if name not in allowed:
            raise InvalidRequest(f"Unknown query parameter {name!r}; this route takes "
                                 f"{', '.join(allowed) or 'none'}.", param=name)
