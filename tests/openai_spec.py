"""Validate our bodies against OpenAI's official OpenAPI spec (`../shared/openai/openapi.json`)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# The spec lives in the team's shared folder beside the checkout (CI lays it there too);
# OPENAI_SPEC points elsewhere.
_CANDIDATES = [
    Path(os.environ.get("OPENAI_SPEC", "")),
    Path(__file__).resolve().parents[2] / "shared" / "openai" / "openapi.json",
    Path("/work/shared/openai/openapi.json"),
]
SPEC_PATH = next((p for p in _CANDIDATES if p.name and p.is_file()), _CANDIDATES[1])


def _nullable(node: object) -> object:
    """The spec mixes OpenAPI 3.0's `nullable: true` into 3.1 schemas; JSON Schema needs `null` spelled out."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@functools.cache
def _spec() -> dict:
    return _nullable(json.loads(SPEC_PATH.read_text()))


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    spec = _spec()
    registry = Registry().with_resource("urn:openai", Resource(contents=spec, specification=DRAFT202012))
    schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(name: str, body: object) -> None:
    """Raise `jsonschema.ValidationError` when `body` does not match the named component schema."""
    _validator(name).validate(body)
