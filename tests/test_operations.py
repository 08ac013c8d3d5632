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


def test_it_starts_with_every_value_of_env_example(tmp_path):
    """An operator who copies .env.example to .env gets a working configuration."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    for line in (root / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    env["DATA_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_it_refuses_an_unknown_host_on_the_api_too(gateway):
    response = httpx.get(gateway + "/v1/models", headers={"Host": "evil.example"})
    assert response.status_code == 400
