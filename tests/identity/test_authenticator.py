"""Bearer credentials to principals: API keys (format, keyed hash, cache,
revocation, expiry) and OAuth access tokens (signature, algorithm, expiry,
revoked families)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volt.identity.access_tokens import AccessTokens
from volt.identity.api_key_format import MalformedKey, new_key, parse_key
from volt.identity.api_keys import ApiKeys
from volt.identity.authenticator import Authenticator
from volt.identity.errors import AuthenticationFailed
from volt.identity.orgs import Orgs
from volt.identity.principal import AuthMethod, Role, Scope

from .conftest import Clock


class CountingKeys(ApiKeys):
    """The real store, counting lookups."""

    lookups = 0

    async def lookup(self, key_id: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().lookup(key_id)


@pytest.fixture
def counting(keys: ApiKeys) -> CountingKeys:
    return CountingKeys(keys.db, keys._hmac_key)


def authenticator(keys: ApiKeys, access: AccessTokens, orgs: Orgs, clock: Clock,
                  monotonic: Clock | None = None) -> Authenticator:
    return Authenticator(keys, access, orgs, trust_domain="volt.test", ttl_s=30,
                         clock=monotonic or Clock(0.0), wall_clock=clock)


def test_keys_round_trip_and_every_single_character_change_is_caught() -> None:
    key, parts = new_key("live")
    assert key.startswith("volt_sk_live_")
    assert parse_key(key) == parts
    for position in range(13, len(key)):
        for replacement in "0aZ":
            if key[position] == replacement:
                continue
            mistyped = key[:position] + replacement + key[position + 1:]
            with pytest.raises(MalformedKey):
                parse_key(mistyped)
    with pytest.raises(MalformedKey):
        parse_key(key[:-1])
    test_key, _ = new_key("test")
    assert parse_key(test_key).mode == "test"


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer sk-openai-key",
     "Bearer volt_sk_live_" + "x" * 50, "Bearer a.b.c", "Bearer volt_sk_prod_abc"],
)
async def test_bad_credentials_are_401(counting: CountingKeys, access: AccessTokens, orgs: Orgs,
                                       clock: Clock, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        await authenticator(counting, access, orgs, clock).authenticate(header)
    assert info.value.status == 401
    assert counting.lookups == 0  # refused on its form, before any store read


async def test_a_key_of_the_right_form_but_unknown_is_refused_and_cached_briefly(
    counting: CountingKeys, access: AccessTokens, orgs: Orgs, clock: Clock,
) -> None:
    key, _ = new_key("live")
    auth = authenticator(counting, access, orgs, clock)
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {key}")
    assert counting.lookups == 1


async def test_a_key_maps_to_its_org_role_scopes_and_spiffe_id(
    counting: CountingKeys, access: AccessTokens, orgs: Orgs, clock: Clock,
) -> None:
    org = await orgs.ensure("acme")
    issued = await counting.create(org.id, "ci", role=Role.ADMIN,
                                   scopes=frozenset({Scope.READ}), mode="test")
    auth = authenticator(counting, access, orgs, clock)
    principal = await auth.authenticate(f"bearer {issued.key}")
    assert principal.org_id == org.id
    assert principal.org_name == "acme"
    assert principal.spiffe_id == f"spiffe://volt.test/org/{org.id}/key/{issued.record.id}"
    assert principal.role is Role.ADMIN
    assert principal.scopes == {Scope.READ}
    assert principal.mode == "test"
    assert principal.method is AuthMethod.API_KEY
    # The secret is never stored: only its keyed hash and a prefix.
    async with counting.db.session() as session:
        from sqlalchemy import text

        rows = (await session.execute(text("select * from api_keys"))).all()
    assert issued.key not in repr(rows)
    assert parse_key(issued.key).secret not in repr(rows)
    # Same id, other secret (a forged key): refused, though the row is cached.
    forged = new_key("test", key_id=issued.record.id)[0]
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {forged}")


async def test_revocation_is_at_once_when_told_and_at_the_ttl_otherwise(
    counting: CountingKeys, access: AccessTokens, orgs: Orgs, clock: Clock,
) -> None:
    org = await orgs.ensure("acme")
    first = await counting.create(org.id, "a")
    second = await counting.create(org.id, "b")
    monotonic = Clock(0.0)
    auth = authenticator(counting, access, orgs, clock, monotonic)
    for issued in (first, second):
        await auth.authenticate(f"Bearer {issued.key}")
        await counting.revoke(org.id, issued.record.id)
    auth.forget_key(first.record.id)  # what the revocation broadcast does
    with pytest.raises(AuthenticationFailed) as info:
        await auth.authenticate(f"Bearer {first.key}")
    assert info.value.code == "revoked_api_key"
    await auth.authenticate(f"Bearer {second.key}")  # not told: cached until the TTL
    monotonic.now = 31.0
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {second.key}")


async def test_an_expired_key_is_refused(counting: CountingKeys, access: AccessTokens,
                                         orgs: Orgs, clock: Clock) -> None:
    org = await orgs.ensure("acme")
    now = datetime.fromtimestamp(clock.now, UTC)
    issued = await counting.create(org.id, "short", expires_at=now + timedelta(hours=1))
    auth = authenticator(counting, access, orgs, clock)
    await auth.authenticate(f"Bearer {issued.key}")
    clock.now += 3601
    with pytest.raises(AuthenticationFailed) as info:
        await auth.authenticate(f"Bearer {issued.key}")
    assert info.value.code == "expired_api_key"


async def test_access_tokens_verify_by_signature_and_die_with_their_family(
    keys: ApiKeys, access: AccessTokens, orgs: Orgs, clock: Clock,
) -> None:
    org = await orgs.ensure("acme")
    token, _ = access.issue(spiffe_id=f"spiffe://volt.test/org/{org.id}/user/usr_1",
                            org_id=org.id, user_id="usr_1", role=Role.MEMBER,
                            scopes=frozenset({Scope.READ}), client_id="volt-cli",
                            family_id="fam_1")
    auth = authenticator(keys, access, orgs, clock)
    principal = await auth.authenticate(f"Bearer {token}")
    assert principal.method is AuthMethod.DEVICE_TOKEN
    assert principal.user_id == "usr_1"
    assert principal.scopes == {Scope.READ}
    auth.revoke_family("fam_1", clock.now + 900)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {token}")

    fresh = authenticator(keys, access, orgs, clock)
    clock.now += 1000  # past exp (and its 5 s leeway)
    with pytest.raises(AuthenticationFailed):
        await fresh.authenticate(f"Bearer {token}")


async def test_unsigned_and_foreign_tokens_are_refused(
    keys: ApiKeys, access: AccessTokens, orgs: Orgs, clock: Clock, keyring: object,
    tmp_path: object,
) -> None:
    from volt.identity.keyring import Keyring

    org = await orgs.ensure("acme")
    claims = {"sub": "spiffe://volt.test/org/x/user/u", "org": org.id, "uid": "u",
              "role": "owner", "scope": "read write", "client_id": "volt-cli", "fam": "f",
              "iss": "http://volt.test", "aud": "volt-api", "exp": int(clock.now) + 600}

    def b64(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    other = AccessTokens(Keyring(tmp_path / "elsewhere").token_signing_key(),  # type: ignore[operator]
                         issuer="http://volt.test", ttl_s=900, clock=clock)
    foreign, _ = other.issue(spiffe_id="spiffe://volt.test/org/x/user/u", org_id=org.id,
                             user_id="u", role=Role.OWNER, scopes=frozenset(Scope),
                             client_id="volt-cli", family_id="f")
    auth = authenticator(keys, access, orgs, clock)
    for token in (unsigned, foreign):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {token}")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
async def test_any_authorization_header_is_401_or_a_principal(
    keys: ApiKeys, access: AccessTokens, orgs: Orgs, clock: Clock, header: str,
) -> None:
    try:
        await authenticator(keys, access, orgs, clock).authenticate(header)
    except AuthenticationFailed as exc:
        status = exc.status
    else:
        raise AssertionError("random text authenticated")
    assert status == 401
