"""GET /v1/models lists what the pool can serve (canonical ids; aliases on request); GET /v1/models/{id} agrees."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import API_KEY
from tests.openai_spec import validate

ALIASES = ["grok-3-fast", "grok-4-fast", "grok-4-fast-expert", "grok-4-expert", "grok-4-heavy", "grok-4.1",
           "grok-4.1-thinking"]


def _ids(client) -> set[str]:
    return {m.id for m in client.models.list()}


def test_it_lists_nothing_for_an_empty_pool(client):
    assert _ids(client) == set()


def test_it_lists_basic_models_for_a_basic_pool(client, pool, gateway):
    pool.add("good-1", tier="basic")
    assert _ids(client) == {"grok-chat-fast"}
    body = httpx.get(gateway + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    validate("ListModelsResponse", body)


def test_it_lists_everything_for_a_heavy_account(client, pool):
    pool.add("heavy-1", tier="heavy")
    assert _ids(client) == {"grok-chat-fast", "grok-chat-auto", "grok-chat-expert", "grok-chat-heavy"}


def test_it_lists_the_aliases_too_when_the_runtime_setting_says_so(client, pool, runtime):
    pool.add("heavy-1", tier="heavy")
    runtime(list_model_aliases=True)
    assert _ids(client) == {"grok-chat-fast", "grok-chat-auto", "grok-chat-expert", "grok-chat-heavy", *ALIASES}
    runtime(list_model_aliases=False)
    assert not _ids(client) & set(ALIASES)


def test_it_leaves_out_tiers_whose_accounts_are_not_active(client, pool):
    pool.add("good-1", tier="basic")
    pool.add("expired-1", tier="super", status="expired")
    pool.add("off-1", tier="heavy", status="disabled")
    assert "grok-chat-expert" not in _ids(client)


def test_it_retrieves_a_model_by_id(client, pool):
    pool.add("heavy-1", tier="heavy")
    model = client.models.retrieve("grok-chat-heavy")
    validate("Model", model.model_dump(exclude_unset=True))
    assert model.owned_by == "xai"


def test_it_answers_404_for_an_unknown_model_id(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-9")
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("model", ["grok-chat-fast", "grok-4.1"])
def test_it_answers_404_for_a_model_the_list_would_not_show(client, model):
    assert _ids(client) == set()  # an empty pool
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(model)
    assert info.value.body["code"] == "model_not_found"


def test_it_retrieves_an_alias_of_a_listed_model_under_the_id_asked(client, pool):
    pool.add("good-1", tier="basic")
    assert client.models.retrieve("grok-4.1").id == "grok-4.1"  # listed or not, an alias still resolves
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("grok-4-expert")  # its model needs a super account
