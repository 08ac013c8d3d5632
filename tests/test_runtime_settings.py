"""Runtime settings: one row edited in the admin (or `manage.py runtime`), in force everywhere within a second."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import httpx
import pytest
import redis
from django.core.management import CommandError, call_command
from django.test import Client

import pools.models
import pools.settings
from pools import proxies
from pools.models import RuntimeSettings
from pools.settings import VERSION_KEY, Runtime, get_runtime, update_runtime
from tests.multiworker import REDIS_URL, ROOT, Cluster, free_port

pytestmark = pytest.mark.timeout(120)
ADMIN_URL = "/admin/pools/runtimesettings/"
THINK = [{"role": "user", "content": "[fake:think] q"}]  # the fake answers with thinking on any model


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
    for secret in ("proxy_url", "proxy_pool_url", "cf_clearance"):
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


def test_two_saves_from_stale_copies_publish_different_versions(transactional_db):
    # The admin and `runtime set` can each hold the row read before the other saved it.
    get_runtime()
    first, second = RuntimeSettings.objects.get(pk=1), RuntimeSettings.objects.get(pk=1)
    first.show_thinking = False
    first.save()
    second.idle_timeout = 61
    second.save()
    assert second.version == first.version + 1
    assert RuntimeSettings.objects.get(pk=1).version == second.version


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


def _thinking_as_think_tags(url: str, headers: dict) -> bool:
    """One non-stream answer with thinking: True when it came as <think> in content, False as reasoning_content."""
    reply = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=30,
                       json={"model": "grok-chat-fast", "messages": THINK})
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    assert message["content"].startswith("<think>") or message.get("reasoning_content"), message
    return message["content"].startswith("<think>")


def _eventually_think_tags(url: str, headers: dict, what: str) -> None:
    # Workers check the version every 0.5 s; poll (bounded) instead of timing it.
    deadline = time.monotonic() + 10
    while not _thinking_as_think_tags(url, headers):
        assert time.monotonic() < deadline, f"{url} never applied {what}"
        time.sleep(0.1)


def test_a_runtime_set_reaches_a_running_server_on_sqlite_without_redis(fake_grok, tmp_path):
    """The default deployment: `manage.py runtime set` in its own process changes what the server answers."""
    fake_grok.reset()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    env.update({"DATA_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": "", "API_KEY": "sk-rtset",
                "GROK_BASE_URL": fake_grok.base_url, "GROK_ASSETS_URL": fake_grok.base_url,
                "PERIODIC_JOBS": "false", "LOG_LEVEL": "WARNING"})

    def manage(*args: str, input: str | None = None) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=input, text=True,
                       check=True, capture_output=True, timeout=60)

    manage("migrate", "-v", "0")
    manage("import_tokens", "-", "--type", "basic", input="good-1\n")
    port = free_port()
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": "Bearer sk-rtset"}
    proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert not _thinking_as_think_tags(url, headers)  # the server has loaded (and cached) the settings

        manage("runtime", "set", "thinking_format", "think")

        _eventually_think_tags(url, headers, "a `runtime set` from another process")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_worker_reads_the_database_version_when_the_redis_key_is_gone(fake_grok):
    """After a Redis flush (or a lost publish) the row's own version still decides."""
    fake_grok.reset()
    with Cluster(workers=1, fake_url=fake_grok.base_url) as cluster:
        cluster.manage("import_tokens", "-", "--type", "basic", input="good-1\n")
        [url] = cluster.urls
        assert not _thinking_as_think_tags(url, cluster.headers)

        # A change the worker was never told about through Redis: the key is gone, the row moved on.
        cluster.sql("update pools_runtimesettings set thinking_format = 'think', version = version + 1")
        redis.Redis.from_url(REDIS_URL).delete(VERSION_KEY)

        _eventually_think_tags(url, cluster.headers, "the database version")


def test_every_setting_an_operator_can_change_is_read(admin_client):
    """A setting in the admin or `manage.py runtime` is a field of `Runtime`, the values in force."""
    read = {spec.name for spec in dataclasses.fields(Runtime)}
    page = admin_client.get(admin_client.get(ADMIN_URL).url).content.decode()
    shown = {name for name in re.findall(r'<(?:input|select|textarea)[^>]* name="([^"]+)"', page)
             if not name.startswith("_") and name != "csrfmiddlewaretoken"}
    assert "thinking_format" in shown and "cf_clearance" in shown
    assert shown <= read, f"the admin shows settings nothing reads: {sorted(shown - read)}"

    out = StringIO()
    call_command("runtime", "list", stdout=out)
    listed = {line.split(" = ", 1)[0] for line in out.getvalue().splitlines()} - {"version"}
    assert "max_attempts" in listed
    assert listed <= read, f"`manage.py runtime` changes settings nothing reads: {sorted(listed - read)}"

    for hidden in ("upstream_dialect", "asset_proxy_url"):
        assert hidden not in shown | listed | read
        assert hidden not in {field.name for field in RuntimeSettings._meta.get_fields()}
        with pytest.raises(CommandError, match="unknown setting"):
            call_command("runtime", "set", hidden, "x")
    assert not hasattr(proxies, "asset_proxy_url")


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, at module level) for every import in `tree`; `from pools import settings` counts as pools.settings."""
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, id(node) in top)]
            found += [(f"{node.module}.{alias.name}", id(node) in top) for alias in node.names]
    return found


def test_settings_depend_on_models_and_not_the_other_way():
    models = _imports(ast.parse(Path(pools.models.__file__).read_text()))
    assert not [name for name, _ in models if name.startswith("pools.settings")]
    settings_imports = _imports(ast.parse(Path(pools.settings.__file__).read_text()))
    assert ("pools.models", True) in settings_imports
    assert [name for name, top in settings_imports if not top] == []  # nothing imported late to dodge a cycle
    assert pools.settings.THINKING_FORMATS is pools.models.THINKING_FORMATS


def test_any_save_of_the_row_is_in_force_at_once_in_this_process(transactional_db):
    assert get_runtime().thinking_format == "reasoning_content"  # cached now
    row = RuntimeSettings.objects.get()
    row.thinking_format = "think"
    row.save()  # neither the admin nor `update_runtime`: the post_save receiver publishes it
    assert get_runtime().thinking_format == "think" and get_runtime().version == 2


async def test_a_worker_answers_from_its_copy_while_the_version_check_runs_behind(transactional_db):
    # No request waits for the version read: an old copy answers, the check refreshes it behind.
    first = await pools.settings.aget_runtime()
    pools.settings._cache.checked_at -= 10 * pools.settings.CHECK_EVERY
    changed = RuntimeSettings.objects.filter(pk=1)
    await changed.aupdate(show_thinking=not first.show_thinking, version=first.version + 1)  # another process
    assert await pools.settings.aget_runtime() is first
    await asyncio.gather(*pools.settings._checks.values())
    assert (await pools.settings.aget_runtime()).show_thinking is not first.show_thinking
