"""``volt login``: the OAuth device flow (RFC 8628) from the client's side.

Asks the API for a device code, tells the person where to approve it, and
polls at the interval the API set, raising it by 5 s on ``slow_down`` as the
RFC says, until the grant is approved (tokens are saved, 0600), denied or
expired (``LoginFailed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from volt.sdk import _calls as calls
from volt.sdk._client import Client
from volt.sdk._credentials import CLIENT_ID, Tokens, save_tokens
from volt.sdk._errors import APIStatusError


class LoginFailed(Exception):
    pass


def device_login(
    base_url: str | None = None, *, scope: str = "read write", client_id: str = CLIENT_ID,
    say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
    credentials_file: Path | None = None,
) -> Tokens:
    with Client(base_url, api_key="-", max_retries=2) as client:
        start = client.run(calls.device_code(client_id, scope))
        say(f"To sign in, open {start.verification_uri_complete}\n"
            f"(or {start.verification_uri} and enter the code {start.user_code}).")
        say(f"Waiting for approval (the code expires in {start.expires_in // 60} minutes)…")
        interval = start.interval
        deadline = time.monotonic() + start.expires_in
        while time.monotonic() < deadline + interval:
            sleep(interval)
            try:
                answer = client.run(calls.device_token(client_id, start.device_code))
            except APIStatusError as error:
                if error.code == "authorization_pending":
                    continue
                if error.code == "slow_down":
                    interval += 5
                    continue
                reasons = {"access_denied": "the sign-in was denied",
                           "expired_token": "the code expired before it was approved"}
                raise LoginFailed(reasons.get(error.code or "", error.message)) from None
            tokens = Tokens(client.base_url, answer.access_token, answer.refresh_token,
                            time.time() + answer.expires_in, answer.scope, client_id)
            save_tokens(tokens, credentials_file)
            return tokens
    raise LoginFailed("the code expired before it was approved")
