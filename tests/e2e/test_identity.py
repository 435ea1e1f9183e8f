"""Identity end to end, on two API replicas over one NATS: keys through the SDK,
revocation everywhere within a second, scopes and roles, limits shared by the
replicas, test keys on test capacity, the device flow from the real
``volt login``, and the audit log verified from the CLI's side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from volt.identity.principal import Limits, Role, Scope
from volt.sdk import AuthenticationError, Client, PermissionDeniedError
from volt.sdk.audit_verify import verify
from volt.testing import Cluster

MESSAGES = [{"role": "user", "content": "who am I?"}]
CHAT = {"model": "volt-tiny", "messages": MESSAGES, "max_tokens": 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Cluster]:
    """Two API replicas, a live pod and a test-capacity pod, instant engines."""
    with Cluster(tmp_path_factory.mktemp("identity"), engine_mode="instant",
                 model_cache=tiny_model,
                 extra_env={"VOLT_AUDIT_CHECKPOINT_INTERVAL_S": "0.2"}) as cluster:
        cluster.add_agent("live-1", metro="fra")
        cluster.add_agent("test-1", metro="fra", capacity="test")
        cluster.start_api()
        cluster.start_api("api-b")
        cluster.wait_routable()
        cluster.wait_routable(port=cluster.api_port_of("api-b"))
        yield cluster


def sdk(cluster: Cluster, key: str, replica: str = "api") -> Client:
    return Client(f"http://127.0.0.1:{cluster.api_port_of(replica)}", api_key=key,
                  max_retries=0)


def test_a_key_made_on_one_replica_works_on_the_other_and_dies_on_both(cluster: Cluster) -> None:
    with sdk(cluster, cluster.api_key) as a, sdk(cluster, cluster.api_key, "api-b") as b:
        me = a.me()
        assert me.spiffe_id.startswith(f"spiffe://volt.local/org/{me.org_id}/key/")
        created = a.keys.create("ci", scopes=["read", "write"])
        assert created.key.startswith("volt_sk_live_")
        assert created.key not in json.dumps([k.redacted_key for k in b.keys.list().data])
        assert b.keys.get(created.id).name == "ci"
    with sdk(cluster, created.key, "api-b") as other:
        assert other.me().credential_id == created.id  # known on replica b at once
    with sdk(cluster, cluster.api_key) as a:
        a.keys.revoke(created.id)
    revoked_at = time.monotonic()
    refused_on: dict[str, float] = {}
    codes: set[str | None] = set()
    while len(refused_on) < 2 and time.monotonic() - revoked_at < 5:
        for replica in ("api", "api-b"):
            if replica in refused_on:
                continue
            with sdk(cluster, created.key, replica) as client:
                try:
                    client.me()
                except AuthenticationError as error:
                    refused_on[replica] = time.monotonic() - revoked_at
                    codes.add(error.code)
    assert set(refused_on) == {"api", "api-b"}
    assert codes == {"revoked_api_key"}
    assert max(refused_on.values()) < 1.0, refused_on


def test_scopes_and_roles_are_checked_on_every_route(cluster: Cluster) -> None:
    reader = cluster.add_key("scopes-org", role=Role.MEMBER, scopes=frozenset({Scope.READ}))
    member = cluster.add_key("scopes-org", role=Role.MEMBER)
    viewer = cluster.add_key("scopes-org", role=Role.VIEWER, scopes=frozenset({Scope.READ}))
    org_id = cluster.org_id("scopes-org")
    status, _, body = cluster.request("/v1/chat/completions", CHAT, key=reader)
    assert status == 403
    assert json.loads(body)["error"]["code"] == "insufficient_scope"
    assert cluster.request("/v1/models", key=reader)[0] == 200
    assert cluster.request("/v1/chat/completions", CHAT, key=member)[0] == 200
    status, _, body = cluster.request(f"/v1/orgs/{org_id}/api-keys", key=member)
    assert status == 403
    assert json.loads(body)["error"]["code"] == "insufficient_role"
    assert cluster.request("/v1/usage", key=viewer)[0] == 200
    with sdk(cluster, cluster.add_key("scopes-org", role=Role.ADMIN)) as admin:
        with pytest.raises(PermissionDeniedError):  # never above its creator
            admin.keys.create("escalate", role="owner")
        assert admin.keys.create("fine", role="admin").role == "admin"


def test_limits_are_shared_by_the_replicas(cluster: Cluster) -> None:
    key = cluster.add_key("limited-org", limits=Limits(requests_per_minute=6))
    while time.time() % 60 > 40:  # all requests inside one window
        time.sleep(0.5)
    statuses, headers = [], {}
    for i in range(12):
        replica = ("api", "api-b")[i % 2]
        status, headers, _ = cluster.request("/v1/chat/completions", CHAT, key=key,
                                             port=cluster.api_port_of(replica))
        statuses.append(status)
    assert statuses.count(200) == 6, statuses  # not 6 per replica
    assert statuses.count(429) == 6
    lower = {k.lower(): v for k, v in headers.items()}
    assert int(lower["retry-after"]) >= 1
    assert lower["x-ratelimit-limit-requests"] == "6"
    assert lower["x-ratelimit-remaining-requests"] == "0"


def test_test_keys_reach_only_test_capacity_and_are_not_billed(cluster: Cluster) -> None:
    test_key = cluster.add_key("sandbox-org", mode="test")
    live_key = cluster.add_key("sandbox-org")
    assert test_key.startswith("volt_sk_test_")
    with openai.OpenAI(base_url=cluster.base_url, api_key=test_key, max_retries=0) as client:
        pods = {client.chat.completions.create(model="volt-tiny", messages=MESSAGES,  # type: ignore[arg-type]
                                               max_tokens=1).model_extra["volt"]["pod"]  # type: ignore[index]
                for _ in range(8)}
    assert pods == {"test-1"}
    with openai.OpenAI(base_url=cluster.base_url, api_key=live_key, max_retries=0) as client:
        pods = {client.chat.completions.create(model="volt-tiny", messages=MESSAGES,  # type: ignore[arg-type]
                                               max_tokens=1).model_extra["volt"]["pod"]  # type: ignore[index]
                for _ in range(8)}
    assert pods == {"live-1"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        live = json.loads(cluster.request("/v1/usage", key=live_key)[2])["data"]
        test = json.loads(cluster.request("/v1/usage", key=test_key)[2])["data"]
        if live and test and live[0]["requests"] >= 8 and test[0]["requests"] >= 8:
            break
        time.sleep(0.2)
    assert live[0]["requests"] == 8  # the test key's requests are not in the billed usage
    assert test[0]["requests"] == 8


def approve_as_member(cluster: Cluster, org: str, user_code: str) -> None:
    """A signed-in member approves the code on the verification page (the
    session is made in the store; OIDC sign-in has its own tests)."""
    import asyncio

    from volt.identity.orgs import Orgs
    from volt.identity.sessions import Sessions
    from volt.store import Database

    org_id = cluster.org_id(org)

    async def session() -> str:
        db = Database(cluster.store_url)
        try:
            user = await Orgs(db).ensure_user("https://idp.test", "dev@example.com")
            await Orgs(db).set_member(org_id, user, Role.MEMBER)
            return await Sessions(db).create(user, "test")
        finally:
            await db.close()

    cookie = asyncio.run(session())
    base = f"http://127.0.0.1:{cluster.api_port}"
    with httpx.Client(base_url=base, cookies={"volt_session": cookie}) as browser:
        page = browser.get("/device", params={"user_code": user_code})
        assert page.status_code == 200
        assert "volt-cli" in page.text
        csrf = page.text.split("name='csrf_token' value='")[1].split("'")[0]
        refused = browser.post("/device", data={"user_code": user_code, "action": "approve",
                                                "org_id": cluster.org_id(org)})
        assert refused.status_code == 403  # no CSRF token
        done = browser.post("/device", data={"csrf_token": csrf, "user_code": user_code,
                                             "action": "approve",
                                             "org_id": cluster.org_id(org)})
        assert done.status_code == 200, done.text


def test_volt_login_runs_the_device_flow_and_the_token_works(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "VOLT_BASE_URL": cluster.base_url}
    env.pop("VOLT_API_KEY", None)
    login = subprocess.Popen([sys.executable, "-m", "volt", "login"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert login.stdout is not None
    first = login.stdout.readline()
    assert "/device?user_code=" in first, first
    user_code = urllib.parse.unquote(first.split("user_code=")[1].split()[0])
    approve_as_member(cluster, "login-org", user_code)
    output, _ = login.communicate(timeout=60)
    assert login.returncode == 0, output
    saved = tmp_path / "volt" / "credentials.json"
    assert (saved.stat().st_mode & 0o777) == 0o600
    assert (saved.parent.stat().st_mode & 0o777) == 0o700
    whoami = subprocess.run([sys.executable, "-m", "volt", "whoami", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert whoami.returncode == 0, whoami.stderr
    me = json.loads(whoami.stdout)
    assert me["auth_method"] == "device_token"
    assert me["org_id"] == cluster.org_id("login-org")
    assert "/user/usr_" in me["spiffe_id"]
    # The device token drives Spark through the official client, too.
    token = json.loads(saved.read_text())["access_token"]
    with openai.OpenAI(base_url=cluster.base_url, api_key=token, max_retries=0) as client:
        assert client.chat.completions.create(model="volt-tiny", messages=MESSAGES,  # type: ignore[arg-type]
                                              max_tokens=1).choices


def test_every_request_is_audited_and_the_log_verifies(cluster: Cluster, tmp_path: Path) -> None:
    key = cluster.add_key("audited-org", role=Role.ADMIN)
    marker = "audit-canary-7c1e"
    status, headers, _ = cluster.request("/v1/chat/completions", {
        **CHAT, "messages": [{"role": "user", "content": marker}]}, key=key)
    assert status == 200
    request_id = {k.lower(): v for k, v in headers.items()}["x-request-id"]
    status, denied_headers, _ = cluster.request(
        f"/v1/orgs/{cluster.org_id('audited-org')}/api-keys",
        key=cluster.add_key("audited-org", role=Role.VIEWER))
    assert status == 403
    denied_id = {k.lower(): v for k, v in denied_headers.items()}["x-request-id"]

    state = tmp_path / "audit-state.json"
    with sdk(cluster, key) as client:
        deadline = time.monotonic() + 20
        seen: dict[str, int] = {}
        while time.monotonic() < deadline:
            report = verify(client, state_file=state)
            assert report.ok, report.problems
            seen = {r.event.request_id: r.event.status
                    for _, r in client.audit.events() if r.inclusion_proof is not None}
            if request_id in seen and denied_id in seen:
                break
            time.sleep(0.3)
        assert seen[request_id] == 200
        assert seen[denied_id] == 403
        again = verify(client, state_file=state)  # consistent with what it saw before
        assert again.ok
        assert again.consistent_from is not None or again.tree_size == report.tree_size
    # Bodies never reach the log, only their hash.
    import sqlite3

    db = sqlite3.connect(cluster.data_dir / "volt.db")
    dump = b"".join(row[0] for row in db.execute("select body from audit_events"))
    db.close()
    assert marker.encode() not in dump
    assert key.encode() not in dump


def test_tokens_per_minute_are_shared_too(cluster: Cluster) -> None:
    # The instant engine answers 64 tokens (plus the prompt's): a budget of 100
    # admits two requests — the second spends what is left — and refuses the third.
    key = cluster.add_key("token-limited-org", limits=Limits(tokens_per_minute=100))
    while time.time() % 60 > 40:
        time.sleep(0.5)
    statuses = []
    for replica in ("api", "api-b", "api", "api-b"):
        status, headers, _ = cluster.request("/v1/chat/completions",
                                             {**CHAT, "max_tokens": 64}, key=key,
                                             port=cluster.api_port_of(replica))
        statuses.append(status)
        time.sleep(0.5)  # the charge for the tokens settles after the response
    assert statuses == [200, 200, 429, 429], statuses
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-ratelimit-limit-tokens"] == "100"


def run_cli(cluster: Cluster, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOLT_API_KEY": key, "VOLT_BASE_URL": cluster.base_url}
    return subprocess.run([sys.executable, "-m", "volt", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_cli_manages_keys_and_reads_usage_and_the_log(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    owner = cluster.add_key("cli-org")
    made = run_cli(cluster, owner, "keys", "create", "deploy-bot", "--scopes", "read",
                   "--expires-in", "30d", "--rpm", "600")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("volt_sk_live_")
    assert "cannot show it again" in made.stderr
    listed = run_cli(cluster, owner, "keys", "list")
    assert "deploy-bot" in listed.stdout
    assert secret not in listed.stdout
    key_id = json.loads(run_cli(cluster, secret, "whoami", "--json").stdout)["credential_id"]
    revoked = run_cli(cluster, owner, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    refused = run_cli(cluster, secret, "whoami")
    assert refused.returncode != 0
    assert "401" in refused.stderr
    assert "Traceback" not in refused.stderr
    usage = run_cli(cluster, owner, "usage", "--group-by", "model")
    assert usage.returncode == 0, usage.stderr
    assert "REQUESTS" in usage.stdout
    env_home = {"XDG_CONFIG_HOME": str(tmp_path)}
    deadline = time.monotonic() + 20
    while True:
        audit = subprocess.run([sys.executable, "-m", "volt", "audit", "verify", "--json"],
                               env={**os.environ, **env_home, "VOLT_API_KEY": owner,
                                    "VOLT_BASE_URL": cluster.base_url},
                               capture_output=True, text=True, timeout=60)
        assert audit.returncode == 0, audit.stderr
        if json.loads(audit.stdout)["events_checked"] >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert json.loads(audit.stdout)["events_checked"] >= 3


def test_audit_events_filter_and_page(cluster: Cluster) -> None:
    key = cluster.add_key("filter-org", role=Role.ADMIN)
    for _ in range(3):
        cluster.request("/v1/models", key=key)
    cluster.request("/v1/orgs/not-mine/api-keys", key=key)  # 404, still this org's event
    with sdk(cluster, key) as client:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            models = [r for _, r in client.audit.events(route="/v1/models")]
            missing = [r for _, r in client.audit.events(status=404)]
            if len(models) == 3 and len(missing) == 1:
                break
            time.sleep(0.2)
        assert len(models) == 3
        assert all(r.event.route == "/v1/models" for r in models)
        assert [r.event.resources for r in missing] == [{"org_id": "not-mine"}]
        page = client.run(__import__("volt.sdk._calls", fromlist=["x"]).audit_events(
            client.org_id(), limit=2))
        assert len(page.data) == 2
        assert page.has_more


async def test_the_async_client(cluster: Cluster) -> None:
    from volt.sdk import AsyncClient

    async with AsyncClient(cluster.base_url, api_key=cluster.api_key, max_retries=0) as client:
        me = await client.me()
        made = await client.keys.create("async-made")
        assert (await client.keys.get(made.id)).name == "async-made"
        names = [k.name async for k in client.keys.iterate()]
        assert "async-made" in names
        await client.keys.revoke(made.id)
        assert (await client.keys.get(made.id)).revoked_at is not None
        assert [m.id for m in (await client.models.list()).data] == ["volt-tiny"]
        assert me.org_id == (await client.me()).org_id


def test_malformed_credentials_and_cookies_are_never_a_500(cluster: Cluster) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120)

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(header=printable, cookie=printable)
    def check(header: str, cookie: str) -> None:
        header, cookie = header.strip(), cookie.strip()  # HTTP forbids edge whitespace
        with httpx.Client(base_url=f"http://127.0.0.1:{cluster.api_port}", timeout=30) as web:
            for path in ("/v1/models", "/v1/me"):
                answer = web.get(path, headers={"Authorization": header})
                assert answer.status_code == 401, (header, answer.text)
                assert answer.json()["error"]["type"] == "authentication_error"
            page = web.get("/console", headers={"Cookie": f"volt_session={cookie}"})
            assert page.status_code in (302, 400), page.text

    check()
