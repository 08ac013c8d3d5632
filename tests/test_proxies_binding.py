"""Each account sticks to one healthy proxy, spread evenly, and the binding lives in the database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from pools import proxies
from pools.models import Account, Proxy
from tests.proxy_server import chat_routes

pytestmark = pytest.mark.timeout(60)
HI = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent


def test_it_keeps_each_account_on_its_proxy_across_requests(client, pool, fake_grok, runtime, farm):
    runtime(proxy_mode="list")
    for name in ("a", "b"):
        Proxy.objects.create(url=farm.proxy(name).url)
    for token in ("good-1", "good-2"):
        pool.add(token)

    for _ in range(6):
        client.chat.completions.create(model="grok-chat-fast", messages=HI)

    one, two = chat_routes(fake_grok, "good-1"), chat_routes(fake_grok, "good-2")
    assert len(one) == 3 and len(two) == 3
    assert len(set(one)) == 1 and len(set(two)) == 1  # sticky
    assert set(one) != set(two)  # spread: fewest bound accounts first
    bound = dict(Account.objects.values_list("token", "proxy__url"))
    assert {bound["good-1"], bound["good-2"]} == set(Proxy.objects.values_list("url", flat=True))


def test_it_spreads_new_bindings_over_the_least_used_proxies(pool, runtime):
    runtime(proxy_mode="list")
    busy = Proxy.objects.create(url="http://127.0.0.2:9")
    idle = Proxy.objects.create(url="http://127.0.0.3:9")
    Proxy.objects.create(url="http://127.0.0.4:9", enabled=False)
    Proxy.objects.create(url="http://127.0.0.5:9", health="failed")
    for i in range(2):
        pool.add(f"bound-{i}", proxy=busy)
    fresh = [pool.add(f"fresh-{i}") for i in range(3)]

    chosen = [async_to_sync(proxies.proxy_for)(a.pk).proxy_id for a in fresh]

    assert chosen == [idle.pk, idle.pk, busy.pk]  # idle catches up first, never a disabled or failed one
    assert list(Account.objects.filter(token__startswith="fresh-").values_list("proxy_id", flat=True)) == chosen


def test_it_rebinds_an_account_whose_proxy_was_disabled(pool, runtime):
    runtime(proxy_mode="list")
    old = Proxy.objects.create(url="http://127.0.0.2:9")
    new = Proxy.objects.create(url="http://127.0.0.3:9")
    account = pool.add("good-1", proxy=old)
    assert async_to_sync(proxies.proxy_for)(account.pk).proxy_id == old.pk

    proxies.disable_proxies([old.pk])

    assert async_to_sync(proxies.proxy_for)(account.pk).proxy_id == new.pk
    account.refresh_from_db()
    assert account.proxy_id == new.pk


def test_it_persists_the_binding_where_another_worker_process_reads_it(pool, runtime):
    runtime(proxy_mode="list")
    for i in range(3):
        Proxy.objects.create(url=f"http://127.0.0.{i + 2}:9")
    account = pool.add("good-1")
    here = async_to_sync(proxies.proxy_for)(account.pk).proxy_id

    there = _proxy_for_in_another_process(account.pk)

    assert there == here


def _proxy_for_in_another_process(account_id: int) -> int:
    """`proxy_for` in a fresh interpreter on the same database: what a second worker would choose."""
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{database['NAME']}"
    else:
        user, password = database.get("USER") or "", database.get("PASSWORD") or ""
        url = f"postgres://{user}:{password}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    script = (
        "import asyncio, django; django.setup()\n"
        "from pools.proxies import proxy_for\n"
        f"print(asyncio.run(proxy_for({account_id})).proxy_id)\n"
    )
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "grok2api.settings", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


def test_it_routes_direct_in_mode_none_and_through_proxy_url_in_static_mode(pool, runtime):
    account = pool.add("good-1")
    runtime(proxy_mode="none")
    assert async_to_sync(proxies.proxy_for)(account.pk) is None
    runtime(proxy_mode="static", proxy_url="socks5://user:pw@127.0.0.10:9")
    choice = async_to_sync(proxies.proxy_for)(account.pk)
    assert choice.url == "socks5h://user:pw@127.0.0.10:9" and choice.proxy_id is None
    assert "pw" not in repr(choice)
    assert Account.objects.get(pk=account.pk).proxy_id is None  # nothing to bind
