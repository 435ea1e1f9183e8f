"""Redfish proxy credentials and sessions: what the proxy accepts and when it
stops, with an injected clock (the proxy end to end: tests/e2e/test_vault.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from volt.config import ConfigError, load_config
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.vault.credentials import CredentialBox
from volt.vault.redfish_credentials import (
    digest,
    issue_session,
    new_credential,
    rack_of,
    read_session,
)
from volt.vault.redfish_proxy import Proxy, RedfishError, _scoped

KEY = b"k" * 32
NOW = 1_800_000_000.0


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(
        f"{username}:{password}".encode()).decode()}


def test_a_credential_names_its_rack_and_is_kept_only_as_a_keyed_hash() -> None:
    entry, password = new_credential(KEY, "fra-r1", now=NOW, ttl_s=3600, created_by="key_1")
    assert rack_of(entry["username"]) == "fra-r1"
    assert password not in str(entry)
    assert entry["secret"] == digest(KEY, password) != digest(b"x" * 32, password)
    assert entry["expires_at"] == NOW + 3600
    assert rack_of("admin") is None


def test_a_session_token_is_refused_once_tampered_with_or_expired() -> None:
    session, token = issue_session(KEY, "fra-r1_0123abcd", NOW + 60)
    assert read_session(KEY, token, NOW) == session
    assert read_session(KEY, token, NOW + 61) is None
    assert read_session(b"x" * 32, token, NOW) is None
    body, mac = token.split(".")
    assert read_session(KEY, body[:-1] + "A." + mac, NOW) is None
    assert read_session(KEY, "garbage", NOW) is None


async def test_the_proxy_refuses_an_expired_revoked_or_foreign_credential(db: Database) -> None:
    store = ResourceStore(db)
    entry, password = new_credential(KEY, "r1", now=NOW, ttl_s=600, created_by="key_1")
    record = await store.create(
        kind="rack", id="r1", org_id="org-a", state="ready", now=NOW,
        spec={"metro": "fra", "tier": "standard", "nodes": []},
        status={"redfish_credentials": [entry]})
    clock = [NOW + 10]
    proxy = Proxy(store, CredentialBox(bytes(32)), KEY, clock=lambda: clock[0],
                  rack_cache_s=0.0)
    tenant = await proxy.authenticate(basic(entry["username"], password))
    assert tenant.rack.id == "r1"
    _, token = proxy.start_session(tenant)
    assert (await proxy.authenticate({"X-Auth-Token": token})).credential["id"] == entry["id"]
    for headers in (basic(entry["username"], "wrong"), basic("r2_0123abcd", password),
                    {"Authorization": "Bearer x"}, {}):
        with pytest.raises(RedfishError) as refused:
            await proxy.authenticate(headers)
        assert refused.value.status == 401
        assert "WWW-Authenticate" in refused.value.headers
    clock[0] = NOW + 601  # expired: the password and its session both stop
    for headers in (basic(entry["username"], password), {"X-Auth-Token": token}):
        with pytest.raises(RedfishError):
            await proxy.authenticate(headers)
    clock[0] = NOW + 10
    await store.update_status(record, {"redfish_credentials": [
        {**entry, "revoked_at": NOW + 5}]}, NOW + 5)
    with pytest.raises(RedfishError):
        await proxy.authenticate(basic(entry["username"], password))
    await proxy.close()


def test_a_bmc_answer_is_shown_scoped_to_the_tenants_node() -> None:
    bmc = {"@odata.id": "/redfish/v1/Systems/abc", "Id": "abc", "UUID": "u-1",
           "Memory": {"@odata.id": "/redfish/v1/Systems/abc/Memory"},
           "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/abc"}],
                     "Chassis": [{"@odata.id": "/redfish/v1/Chassis/c"}]},
           "Actions": {"#ComputerSystem.Reset": {
               "target": "/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset"}},
           "Oem": {"Manager": {"@odata.id": "/redfish/v1/Managers/abc"}}}
    assert _scoped(bmc, "abc", "r1-n1") == {
        "@odata.id": "/redfish/v1/Systems/r1-n1", "Id": "r1-n1", "UUID": "u-1",
        "Memory": {"@odata.id": "/redfish/v1/Systems/r1-n1/Memory"}, "Links": {},
        "Actions": {"#ComputerSystem.Reset": {
            "target": "/redfish/v1/Systems/r1-n1/Actions/ComputerSystem.Reset"}},
        "Oem": {}}


def test_a_bad_credentials_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    for path, said in ((tmp_path / "missing.key", "cannot read"), (short, "32 bytes")):
        config = load_config(env={"VOLT_VAULT_CREDENTIALS_KEY_FILE": str(path),
                                  "VOLT_DATA_DIR": str(tmp_path)})
        with pytest.raises(ConfigError, match=r"vault\.credentials_key_file") as bad:
            CredentialBox.from_config(config)
        assert said in str(bad.value)
