"""The model catalogue: public OpenAI model ids -> Grok mode, tier and quota cost.

Data, not branches: adding a model is adding a row. Aliases keep the ids the
earlier gateways published working; they resolve to the canonical entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from pools.models import TIER_ORDER

# Unix time we report as `created` for every model: the day this catalogue shape landed.
CATALOGUE_CREATED = 1764028800  # 2025-11-25


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    mode: str  # gen-2 `modeId`: fast | auto | expert | heavy
    tier: str  # minimum account tier: basic | super | heavy
    cost: int  # quota units one call uses (local estimate, §8.2)
    canonical: str = ""  # set on aliases: the id they stand for

    @property
    def is_alias(self) -> bool:
        return bool(self.canonical)


_CANONICAL = (
    ModelSpec("grok-chat-fast", mode="fast", tier="basic", cost=1),
    ModelSpec("grok-chat-auto", mode="auto", tier="super", cost=1),
    ModelSpec("grok-chat-expert", mode="expert", tier="super", cost=4),
    ModelSpec("grok-chat-heavy", mode="heavy", tier="heavy", cost=4),
)

_ALIASES = {
    "grok-3-fast": "grok-chat-fast",
    "grok-4-fast": "grok-chat-fast",
    "grok-4.1": "grok-chat-fast",
    "grok-4-fast-expert": "grok-chat-expert",
    "grok-4-expert": "grok-chat-expert",
    "grok-4.1-thinking": "grok-chat-expert",
    "grok-4-heavy": "grok-chat-heavy",
}


def _build() -> dict[str, ModelSpec]:
    by_id = {spec.id: spec for spec in _CANONICAL}
    for alias, target in _ALIASES.items():
        base = by_id[target]
        by_id[alias] = ModelSpec(alias, mode=base.mode, tier=base.tier, cost=base.cost, canonical=target)
    return by_id


CATALOGUE: dict[str, ModelSpec] = _build()


def get_model(model_id: str) -> ModelSpec | None:
    return CATALOGUE.get(model_id)


def all_models() -> list[ModelSpec]:
    return list(CATALOGUE.values())


def tier_satisfies(account_tier: str, needed: str) -> bool:
    return TIER_ORDER[account_tier] >= TIER_ORDER[needed]
