"""Runtime settings: one row edited in the admin (or `manage.py runtime`), in force everywhere within a second."""

from __future__ import annotations

import time
from io import StringIO

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from pools.models import RuntimeSettings
from pools.settings import get_runtime, update_runtime
from tests.multiworker import Cluster

pytestmark = pytest.mark.timeout(120)
ADMIN_URL = "/admin/pools/runtimesettings/"


@pytest.fixture
def admin_client(django_user_model, transactional_db):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    browser = Client()
    browser.force_login(user)
    return browser


def _form(admin_client) -> dict:
    """The change form's current values, as the browser would post them back."""
    row = RuntimeSettings.objects.get()
    data = {}
    for field in RuntimeSettings._meta.concrete_fields:
        if field.editable and field.name != "id":
            value = getattr(row, field.name)
            if isinstance(value, bool):
                if value:
                    data[field.name] = "on"
            else:
                data[field.name] = value
    for secret in ("proxy_url", "proxy_pool_url", "asset_proxy_url", "cf_clearance"):
        data[secret] = ""
    return data


def test_it_starts_from_the_environment_defaults(transactional_db, settings):
    runtime = get_runtime()
    assert runtime.thinking_format == settings.RUNTIME_DEFAULTS["thinking_format"]
    assert runtime.first_byte_timeout == settings.RUNTIME_DEFAULTS["first_byte_timeout"]
    assert runtime.version == 1


def test_it_opens_the_one_row_from_the_list(admin_client):
    response = admin_client.get(ADMIN_URL)
    assert response.status_code == 302 and response.url.endswith("/1/change/")
    page = admin_client.get(response.url).content.decode()
    assert "Environment default" in page and "Time budgets" in page


def test_it_applies_a_save_from_the_admin_at_once(admin_client):
    url = admin_client.get(ADMIN_URL).url
    data = {**_form(admin_client), "thinking_format": "think", "idle_timeout": "12.5"}
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    runtime = get_runtime()
    assert runtime.thinking_format == "think" and runtime.idle_timeout == 12.5 and runtime.version == 2


def test_it_refuses_invalid_values_with_a_message(admin_client):
    url = admin_client.get(ADMIN_URL).url
    page = admin_client.post(url, {**_form(admin_client), "first_byte_timeout": "0",
                                   "retry_status_codes": "500,abc"}).content.decode()
    assert "Must be more than 0 seconds." in page and "comma-separated list of HTTP statuses" in page
    assert get_runtime().first_byte_timeout == 30.0


def test_it_never_renders_secrets_back(admin_client):
    update_runtime(cf_clearance="cf-secret-value-0123456789", proxy_mode="static",
                   proxy_url="http://user:hunter2@127.0.0.1:3128")
    url = admin_client.get(ADMIN_URL).url
    page = admin_client.get(url).content.decode()
    assert "cf-secret-value-0123456789" not in page and "hunter2" not in page
    assert "http://user:****@127.0.0.1:3128" in page
    admin_client.post(url, _form(admin_client))  # empty secret boxes keep the values
    assert get_runtime().cf_clearance == "cf-secret-value-0123456789"
    admin_client.post(url, {**_form(admin_client), "cf_clearance": "-"})
    assert get_runtime().cf_clearance == ""


def test_it_keeps_a_change_history(admin_client):
    url = admin_client.get(ADMIN_URL).url
    admin_client.post(url, {**_form(admin_client), "max_attempts": "5"})
    history = admin_client.get(url.replace("/change/", "/history/")).content.decode()
    assert "Max attempts" in history


def test_the_command_lists_gets_and_sets(transactional_db):
    out = StringIO()
    call_command("runtime", "set", "thinking_format", "think", stdout=out)
    assert "thinking_format = think (version 2)" in out.getvalue()
    out = StringIO()
    call_command("runtime", "get", "thinking_format", stdout=out)
    assert out.getvalue().strip() == "think"
    with pytest.raises(CommandError, match="reasoning_content"):
        call_command("runtime", "set", "thinking_format", "loud")
    with pytest.raises(CommandError, match="unknown setting"):
        call_command("runtime", "set", "colour", "blue")


def _answer(url: str, headers: dict) -> str:
    reply = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=30, json={
        "model": "grok-chat-expert", "messages": [{"role": "user", "content": "q"}]})
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def test_a_save_in_one_process_reaches_every_worker_within_a_second(fake_grok):
    fake_grok.reset()
    with Cluster(workers=2, fake_url=fake_grok.base_url) as cluster:
        cluster.manage("import_tokens", "-", "--type", "super", input="rt-super-1\n")
        for url in cluster.urls:  # both workers have loaded (and cached) the settings
            assert not _answer(url, cluster.headers).startswith("<think>")
        cluster.manage("runtime", "set", "thinking_format", "think")
        # Workers check the published version every 0.5 s; poll (bounded) instead of timing it.
        for url in cluster.urls:
            deadline = time.monotonic() + 10
            while not _answer(url, cluster.headers).startswith("<think>"):
                assert time.monotonic() < deadline, f"{url} never applied the new setting"
                time.sleep(0.1)
