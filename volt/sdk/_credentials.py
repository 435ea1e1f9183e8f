"""Where the SDK's credential comes from, and where ``volt login`` keeps one.

In order: an ``api_key`` given to the client, ``VOLT_API_KEY``, then the
tokens ``volt login`` saved in ``$XDG_CONFIG_HOME/volt/credentials.json``
(``~/.config/volt``), written with owner-only permissions (0600, folder
0700). Saved tokens are refreshed when the access token expires, and the
rotated refresh token is written back at once (the old one is dead: using it
again would revoke the whole sign-in).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CLIENT_ID = "volt-cli"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "volt"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@dataclass
class Tokens:
    base_url: str
    access_token: str
    refresh_token: str
    expires_at: float
    scope: str
    client_id: str = CLIENT_ID

    def fresh(self, margin_s: float = 30.0) -> bool:
        return time.time() < self.expires_at - margin_s


def save_tokens(tokens: Tokens, path: Path | None = None) -> Path:
    path = path or credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(tokens), handle)
    os.replace(temporary, path)
    return path


def load_tokens(path: Path | None = None) -> Tokens | None:
    path = path or credentials_path()
    try:
        data = json.loads(path.read_text())
        return Tokens(**data)
    except (OSError, ValueError, TypeError):
        return None
