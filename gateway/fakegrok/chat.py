"""The chat endpoint: refusals first (token, markers, quota), then the chosen stream."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from . import replies, scenarios
from .http import Reply, StreamResponse
from .media import content_type_for, payload_for
from .state import Asset, State, user_id
from .streams import Turn


def _refusal(state: State, token: str, plan: scenarios.Plan, conversation_id: str | None) -> Reply | None:
    owner = state.conversation_owner(conversation_id) if conversation_id else None
    if owner is not None and owner != token:
        # Continuations must come from the account that started the conversation (§2.6).
        return replies.not_found("conversation not found")
    if token.startswith("ratelimited-"):
        return replies.too_many(60)
    if "status" in plan.markers and (reply := replies.for_status_marker(plan.markers["status"])):
        return reply
    if plan.charged and state.consume(token, plan.mode, plan.cost) is None:
        return replies.too_many(state.quota(token, plan.mode).window)
    return None


async def chat(state: State, token: str, body: dict[str, Any], conversation_id: str | None) -> Reply:
    message = body.get("message")
    if not isinstance(message, str):
        return replies.bad_request("message must be a string")
    mode = scenarios.mode_of(body)
    if mode is None:
        return replies.bad_request(f"unknown modeId {body.get('modeId')!r}")
    markers = scenarios.parse_markers(message)
    plan = scenarios.plan(body, mode, markers)
    slow = scenarios.seconds(markers, "slow-headers")
    refusal = _refusal(state, token, plan, conversation_id)
    if refusal is not None:
        if slow:
            await asyncio.sleep(slow)
        return refusal

    turn = Turn(
        message=message,
        model=str(body.get("modeId") or body.get("modelName") or mode),
        conversation_id=conversation_id or str(uuid.uuid4()),
        new_conversation=conversation_id is None,
        user_response_id=str(uuid.uuid4()),
        response_id=str(uuid.uuid4()),
        media=scenarios.media_paths(plan.kind, user_id(token)),
    )
    if turn.new_conversation:
        state.add_conversation(turn.conversation_id, token)
    for path in turn.media:
        asset_id, name = path.split("/")[-2:]
        state.add_asset(Asset(asset_id, path, token, content_type_for(path), payload_for(path), name))
    epoch: list[int] = []  # the state's epoch when the stream opened (see FakeState.reset)
    return StreamResponse(
        steps=scenarios.steps(scenarios.frames(plan, turn, body), markers),
        # Cloudflare's bot-management cookie rides on grok.com's answers (no Secure flag here: plain http).
        headers={"Set-Cookie": f"__cf_bm={uuid.uuid4().hex}; path=/; HttpOnly"},
        delay_headers=slow,
        on_open=lambda: epoch.append(state.stream_opened(token)),
        on_close=lambda outcome: state.stream_closed(token, outcome, epoch[0]),
    )
