"""Tenant catalogs: a tenant is never served outside what it may use."""

from __future__ import annotations

import json

import openai
import pytest

from volt.store import Catalog
from volt.testing import Cluster

MESSAGES = [{"role": "user", "content": "where am I served?"}]


def test_a_tenant_limited_to_one_metro_is_only_served_there(two_metros: Cluster) -> None:
    two_metros.set_catalog("fra-only", Catalog(metros=frozenset({"fra"})))
    key = two_metros.add_key("fra-only")
    with openai.OpenAI(base_url=two_metros.base_url, api_key=key, max_retries=0) as sdk:
        pods = {
            sdk.chat.completions.create(
                model="volt-tiny", messages=MESSAGES, max_tokens=1  # type: ignore[arg-type]
            ).model_extra["volt"]["pod"]  # type: ignore[index]
            for _ in range(20)
        }
        assert pods == {"fra-1"}
        with pytest.raises(openai.PermissionDeniedError) as info:
            sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES,  # type: ignore[arg-type]
                                        extra_body={"volt": {"metro": "ams"}})
        assert info.value.code == "metro_not_allowed"
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES,  # type: ignore[arg-type]
                                        extra_body={"volt": {"metro": ["fra", "ams"]}})


def test_models_outside_the_catalog_do_not_exist_for_the_tenant(two_metros: Cluster) -> None:
    two_metros.set_catalog("no-models", Catalog(models=frozenset({"some-other-model"})))
    key = two_metros.add_key("no-models")
    with openai.OpenAI(base_url=two_metros.base_url, api_key=key, max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == []
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("volt-tiny")
        with pytest.raises(openai.NotFoundError) as info:
            sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES)  # type: ignore[arg-type]
        assert info.value.code == "model_not_found"


def test_a_tier_outside_the_catalog_is_refused(two_metros: Cluster) -> None:
    two_metros.set_catalog("premium-only", Catalog(tiers=frozenset({"premium"})))
    key = two_metros.add_key("premium-only")
    status, _, body = two_metros.request("/v1/chat/completions", {
        "model": "volt-tiny", "messages": MESSAGES, "volt": {"tier": "standard"},
    }, key=key)
    assert status == 403
    assert json.loads(body)["error"]["code"] == "tier_not_allowed"
    # Unpinned, it may only use premium pods, and there are none: 503, not a standard pod.
    status, _, body = two_metros.request("/v1/chat/completions", {
        "model": "volt-tiny", "messages": MESSAGES,
    }, key=key)
    assert status == 503
