"""One page of an org's resources (leases, racks), newest first: the query
every resource list route takes — ``limit``, ``after`` and ``state`` — checked
the same way (anything else is a 400)."""

from __future__ import annotations

from collections.abc import Mapping

from volt.control_api.errors import InvalidRequest
from volt.control_api.identity_routes import page_limit
from volt.control_api.scheduler_commands import known_query
from volt.identity import Principal
from volt.store.resources import Page, ResourceStore


async def org_page(store: ResourceStore, kind: str, principal: Principal,
                   args: Mapping[str, str], *, states: tuple[str, ...], noun: str) -> Page:
    known_query(args, ("limit", "after", "state"))
    limit = page_limit(args)
    state = args.get("state")
    if state is not None and state not in states:
        raise InvalidRequest(f"`state` must be one of {', '.join(states)}.", param="state")
    try:
        return await store.page(kind, principal.org_id, limit=limit,
                                after=args.get("after") or None,
                                states=[state] if state else None)
    except KeyError:
        raise InvalidRequest(f"`after` is not a {noun} of this organization.",
                             param="after") from None
