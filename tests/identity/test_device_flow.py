"""The device authorization grant (RFC 8628) through every error state, and
rotating refresh tokens with reuse detection, on an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from volt.identity.access_tokens import AccessTokens
from volt.identity.device_flow import (
    USER_CODE_ALPHABET,
    DeviceFlow,
    OAuthFailure,
    normalize_user_code,
)
from volt.identity.orgs import Orgs
from volt.identity.principal import Role, Scope
from volt.store import Database

from .conftest import Clock


@pytest.fixture
def revoked() -> list[str]:
    return []


@pytest.fixture
def flow(db: Database, orgs: Orgs, access: AccessTokens, clock: Clock,
         revoked: list[str]) -> DeviceFlow:
    async def told(family: str, until: float) -> None:
        revoked.append(family)

    return DeviceFlow(db, orgs, access, trust_domain="volt.test",
                      clients=frozenset({"volt-cli"}), code_ttl_s=600, interval_s=5,
                      clock=clock, on_family_revoked=told)


async def member(orgs: Orgs, role: Role = Role.MEMBER) -> tuple[str, str]:
    org = await orgs.ensure("acme")
    user = await orgs.ensure_user("https://idp.test", "alice")
    await orgs.set_member(org.id, user, role)
    return org.id, user


async def failure(flow: DeviceFlow, device_code: str, client: str = "volt-cli") -> str:
    with pytest.raises(OAuthFailure) as info:
        await flow.poll(client, device_code)
    return info.value.error


async def test_pending_slow_down_then_approved_then_redeemed_once(
    flow: DeviceFlow, orgs: Orgs, clock: Clock,
) -> None:
    org_id, user = await member(orgs)
    start = await flow.start("volt-cli", "read write")
    assert len(normalize_user_code(start.user_code)) == 8
    assert set(normalize_user_code(start.user_code)) <= set(USER_CODE_ALPHABET)
    assert await failure(flow, start.device_code) == "authorization_pending"
    clock.now += 1  # faster than the interval
    assert await failure(flow, start.device_code) == "slow_down"
    clock.now += 6  # the interval is now 10 s and remembered
    assert await failure(flow, start.device_code) == "slow_down"
    clock.now += 16
    assert await failure(flow, start.device_code) == "authorization_pending"

    typed = start.user_code.lower().replace("-", " ")  # case and punctuation ignored
    pending = await flow.pending(typed)
    assert pending is not None
    assert pending.scopes == {Scope.READ, Scope.WRITE}
    assert await flow.approve(typed, org_id=org_id, user_id=user)
    assert not await flow.approve(typed, org_id=org_id, user_id=user)  # decided once

    clock.now += 20
    tokens = await flow.poll("volt-cli", start.device_code)
    assert tokens.scopes == {Scope.READ, Scope.WRITE}
    claims = flow.access.verify(tokens.access_token)
    assert claims.spiffe_id == f"spiffe://volt.test/org/{org_id}/user/{user}"
    assert claims.role is Role.MEMBER
    clock.now += 20
    assert await failure(flow, start.device_code) == "invalid_grant"  # redeemed


async def test_racing_polls_redeem_the_code_exactly_once(flow: DeviceFlow, orgs: Orgs) -> None:
    org_id, user = await member(orgs)
    start = await flow.start("volt-cli", None)
    await flow.approve(start.user_code, org_id=org_id, user_id=user)
    results = await asyncio.gather(*(flow.poll("volt-cli", start.device_code)
                                     for _ in range(8)), return_exceptions=True)
    issued = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, OAuthFailure)]
    assert len(issued) == 1
    assert len(refused) == 7
    assert {r.error for r in refused} == {"invalid_grant"}


async def test_denied_expired_unknown_and_foreign_codes(flow: DeviceFlow, orgs: Orgs,
                                                        clock: Clock) -> None:
    await member(orgs)
    denied = await flow.start("volt-cli", "read")
    assert await flow.deny(denied.user_code)
    assert await failure(flow, denied.device_code) == "access_denied"

    late = await flow.start("volt-cli", "read")
    clock.now += 601
    assert await failure(flow, late.device_code) == "expired_token"
    assert await flow.pending(late.user_code) is None

    assert await failure(flow, "no-such-code") == "invalid_grant"
    with pytest.raises(OAuthFailure) as info:
        await flow.start("someone-else", "read")
    assert info.value.error == "invalid_client"
    flow.clients = frozenset({"volt-cli", "other-cli"})
    mine = await flow.start("volt-cli", "read")
    assert await failure(flow, mine.device_code, client="other-cli") == "invalid_grant"
    with pytest.raises(OAuthFailure) as info:
        await flow.start("volt-cli", "admin")
    assert info.value.error == "invalid_scope"


async def test_a_viewer_gets_read_only(flow: DeviceFlow, orgs: Orgs) -> None:
    org_id, user = await member(orgs, Role.VIEWER)
    start = await flow.start("volt-cli", "read write")
    await flow.approve(start.user_code, org_id=org_id, user_id=user)
    tokens = await flow.poll("volt-cli", start.device_code)
    assert tokens.scopes == {Scope.READ}


async def test_refresh_rotates_and_a_replay_revokes_the_family(
    flow: DeviceFlow, orgs: Orgs, revoked: list[str],
) -> None:
    org_id, user = await member(orgs)
    start = await flow.start("volt-cli", "read write")
    await flow.approve(start.user_code, org_id=org_id, user_id=user)
    first = await flow.poll("volt-cli", start.device_code)
    second = await flow.refresh("volt-cli", first.refresh_token)
    third = await flow.refresh("volt-cli", second.refresh_token)
    family = flow.access.verify(third.access_token).family_id
    assert family == flow.access.verify(first.access_token).family_id

    with pytest.raises(OAuthFailure) as info:
        await flow.refresh("volt-cli", first.refresh_token)  # a stolen, old token
    assert info.value.error == "invalid_grant"
    assert revoked == [family]
    with pytest.raises(OAuthFailure):
        await flow.refresh("volt-cli", third.refresh_token)  # the family is dead
    assert family in await flow.revoked_families()


async def test_a_removed_member_cannot_refresh(flow: DeviceFlow, orgs: Orgs) -> None:
    org_id, user = await member(orgs)
    start = await flow.start("volt-cli", "read")
    await flow.approve(start.user_code, org_id=org_id, user_id=user)
    tokens = await flow.poll("volt-cli", start.device_code)
    await orgs.sync_oidc_roles(user, {})  # no oidc roles; the manual one stays
    async with orgs.db.session() as session, session.begin():
        from sqlalchemy import delete

        from volt.identity.tables import Member

        await session.execute(delete(Member))
    with pytest.raises(OAuthFailure) as info:
        await flow.refresh("volt-cli", tokens.refresh_token)
    assert info.value.error == "invalid_grant"


async def test_codes_and_tokens_are_stored_only_as_hashes(flow: DeviceFlow, orgs: Orgs) -> None:
    org_id, user = await member(orgs)
    start = await flow.start("volt-cli", "read")
    await flow.approve(start.user_code, org_id=org_id, user_id=user)
    tokens = await flow.poll("volt-cli", start.device_code)
    from sqlalchemy import text

    async with flow.db.session() as session:
        dump = repr((await session.execute(text("select * from device_grants"))).all()) + repr(
            (await session.execute(text("select * from refresh_tokens"))).all())
    assert start.device_code not in dump
    assert tokens.refresh_token not in dump
