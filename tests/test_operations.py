"""Operator-facing basics: health, the root redirect, request ids, the open-API warning."""

from __future__ import annotations

import httpx


def test_it_answers_health_cheaply(gateway):
    response = httpx.get(gateway + "/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_it_redirects_the_root_to_the_admin(gateway):
    response = httpx.get(gateway + "/", follow_redirects=False)
    assert response.status_code == 302 and response.headers["location"] == "/admin/"


def test_it_tags_every_response_with_a_request_id(gateway):
    assert len(httpx.get(gateway + "/health").headers["x-request-id"]) == 16
    assert httpx.get(gateway + "/health", headers={"X-Request-Id": "abc"}).headers["x-request-id"] == "abc"
