"""OpenAI chat messages -> the single Grok prompt (each call is a new, temporary conversation).

System and developer text comes first, then the turns in order, each block
labelled with its role, so the model sees the whole history deterministically.
A lone user message is sent as it is.
"""

from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.schemas import ChatMessage

_INSTRUCTION_ROLES = ("system", "developer")
_TURN_ROLES = ("user", "assistant")


def message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part_index, part in enumerate(content):
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type in ("image_url", "input_image", "image"):
            raise InvalidRequest(
                "Image input is not supported yet by this gateway; send text content only.",
                param=f"messages[{index}].content[{part_index}]",
                code="unsupported_content",
            )
        else:
            raise InvalidRequest(
                f"Content part type `{part.type}` is not supported; use `text`.",
                param=f"messages[{index}].content[{part_index}].type",
                code="unsupported_content",
            )
    return "\n".join(texts)


def flatten(messages: list[ChatMessage]) -> str:
    """The prompt Grok receives. Raises `InvalidRequest` for roles or parts we cannot carry."""
    instructions: list[str] = []
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        text = message_text(message, index)
        if message.role in _INSTRUCTION_ROLES:
            if text:
                instructions.append(text)
        elif message.role in _TURN_ROLES:
            turns.append((message.role, text))
        elif message.role in ("tool", "function"):
            raise InvalidRequest(
                "Tool and function messages are not supported yet by this gateway.",
                param=f"messages[{index}].role",
                code="unsupported_role",
            )
        else:
            raise InvalidRequest(
                f"Unknown role `{message.role}`; use system, developer, user or assistant.",
                param=f"messages[{index}].role",
            )
    if not any(text for _, text in turns) and not instructions:
        raise InvalidRequest("The messages contain no text.", param="messages")
    if not instructions and len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    blocks = []
    if instructions:
        blocks.append("system: " + "\n\n".join(instructions))
    blocks.extend(f"{role}: {text}" for role, text in turns)
    return "\n\n".join(blocks)
