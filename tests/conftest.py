"""Shared cast for the suite: a real fake Grok, a real gateway server, real clients.

- `fake_grok`: the built-in fake upstream (`gateway/fakegrok`) on a loopback port.
- `gateway_url`: the gateway itself, served by uvicorn (the ASGI server `make run`
  uses) in a background thread, pointed at the fake, sharing the test database.
- `accounts`: helpers to put accounts in the pool; tokens pick the fake's behaviour
  (`expired-…`, `ratelimited-…`, `banned-…`, `cfblocked-…`, `flaky-…`, anything else works).
- `client`: the official `openai` SDK, pointed at the gateway.
- `settle_usage()` / `await asettle_usage()`: write the usage ledger (`pools.usage`) now,
  as its background flusher does every interval, before reading use counts, failure
  resets or quota debits from the database.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import openai
import pytest
from django.conf import settings

from gateway.fakegrok import FakeGrok

API_KEY = "sk-test-key"
# A second database, for tests that lease through PostgreSQL next to the SQLite default
# (`django_db(databases=["default", "pg"])`); pytest-django creates it only when such a test runs.
POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/test"


def _add_postgres_alias() -> None:
    import environ
    from django.db import connections

    config = environ.Env.db_url_config(POSTGRES_URL)
    config["TEST"] = {"NAME": f"test_grok2api_pg_{os.getpid()}"}  # concurrent runs share the server
    config["ENGINE"] = "grok2api.db.postgresql"  # the backend grok2api.settings picks for PostgreSQL
    settings.DATABASES["pg"] = config
    # Django read DATABASES at setup; the alias must reach its connection handler too.
    connections.settings["pg"] = config
    connections.configure_settings(connections.settings)


_add_postgres_alias()


def _one_ast_parse_at_a_time() -> None:
    """CPython before the fix for cpython#106905 keeps the AST constructor's recursion depth in shared state.

    Two threads in `ast.parse` at once can fail with "SystemError: AST constructor recursion
    depth mismatch". Both pytest (showing a failure's source) and `traceback` (placing the
    `^^^` under a logged exception, as the gateway's server thread does) call it, so a test
    failing while a background thread logs an error crashed the whole run (INTERNALERROR)
    and hid which test failed.
    """
    if getattr(ast.parse, "_serialized", False):
        return
    lock = threading.Lock()
    parse = ast.parse

    def serialized(*args, **kwargs):
        with lock:
            return parse(*args, **kwargs)

    serialized._serialized = True
    ast.parse = serialized


_one_ast_parse_at_a_time()


@pytest.fixture(scope="session")
def fake_grok() -> Iterator[FakeGrok]:
    fake = FakeGrok(host="127.0.0.1", port=0)
    fake.start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture(scope="session")
def gateway_url(django_db_setup, django_db_blocker, fake_grok: FakeGrok) -> Iterator[str]:
    from gateway.management.commands.serve import uvicorn_server

    settings.GROK_BASE_URL = fake_grok.base_url
    settings.GROK_ASSETS_URL = fake_grok.base_url
    settings.API_KEYS = [API_KEY]
    settings.PERIODIC_JOBS = False  # tests run jobs themselves (`pools.jobs.run_job`)
    # The server `make run` runs, configured as `manage.py serve` configures it (signals stay with pytest).
    server = uvicorn_server(host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start listening")
        time.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    yield f"http://{host}:{port}"


@pytest.fixture
def gateway(gateway_url: str, fake_grok: FakeGrok, transactional_db) -> Iterator[str]:
    """The gateway's base URL, with a fresh fake and an empty pool; waits for streams to drain after."""
    fake_grok.reset()
    yield gateway_url
    _wait_idle(fake_grok)


def _wait_idle(fake: FakeGrok, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(fake.stats(t).in_flight for t in {r.token for r in fake.requests() if r.token}):
            return
        time.sleep(0.05)


@contextlib.contextmanager
def raw_chat_stream(gateway: str, content: str, request_id: str = "") -> Iterator[socket.socket]:
    """A streaming chat sent over a bare socket, so a test can leave at any moment: closing it (the
    end of the block) is a client that hangs up, which the SDKs never let a test do mid-frame."""
    host, port = gateway.removeprefix("http://").split(":")
    body = json.dumps({"model": "grok-chat-fast", "stream": True, "messages": [{"role": "user", "content": content}]})
    extra = f"X-Request-Id: {request_id}\r\n" if request_id else ""
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n{extra}"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request.encode())
        yield sock


def read_frames(sock: socket.socket, count: int) -> None:
    """Read until `count` SSE frames have arrived."""
    received = b""
    while received.count(b"data: ") < count:
        received += sock.recv(4096)


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


@pytest.fixture
def aclient(gateway: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


class Pool:
    """Put accounts in the pool: `pool.add("good-1")`, `pool.add("expired-1", tier="super")`."""

    def add(self, token: str, tier: str = "basic", **fields: object):
        from pools.models import Account

        return Account.objects.create(token=token, tier=tier, **fields)

    def get(self, token: str):
        from pools.models import Account

        return Account.objects.get(token=token)


@pytest.fixture
def pool(transactional_db) -> Pool:
    return Pool()


@pytest.fixture
def runtime(transactional_db):
    """Change runtime settings for one test: `runtime(first_byte_timeout=0.5)` (saved like the admin does)."""
    from pools.settings import update_runtime

    return update_runtime


@pytest.fixture(autouse=True)
def _forget_leases():
    """Each test leases through a fresh backend (the configured one), and stops the renewals it left running."""
    from pools import leasing, selection

    leasing.use(None)
    yield
    selection.cancel_renewals()
    leasing.use(None)


def settle_usage() -> int:
    """Write what the usage ledger holds (use counts, failure resets, quota debits) now; sync tests."""
    from pools import usage

    return usage.flush()


async def asettle_usage() -> int:
    """`settle_usage` for async tests (the flush runs in Django's sync thread)."""
    from pools import usage

    return await usage.aflush()


@pytest.fixture(autouse=True)
def _forget_usage():
    """Each test starts and ends with an empty usage ledger: a finished test's counters belong to no database."""
    from pools import usage

    usage.discard()
    yield
    usage.discard()


@pytest.fixture(autouse=True, scope="session")
def _no_usage_flush_at_exit():
    """At exit the test databases are gone and Django points at the real one again: write nothing there."""
    from pools import usage

    usage.flush_at_exit(False)


@pytest.fixture(autouse=True, scope="session")
def _no_background_usage_flush():
    """The ledger reaches the database when a test says so (`settle_usage`), not once a second.

    A background flush belongs to no test: one that a finished test's last answer
    started could write while the next test ran, and wait for its SQLite lock.
    `tests/test_usage_ledger.py` runs the flusher on purpose, with its own interval.
    """
    settings.USAGE_FLUSH_INTERVAL = 3600.0


@pytest.fixture(autouse=True)
def _forget_runtime():
    """Each test starts from the environment's runtime defaults (the database is flushed under the cache)."""
    yield
    from pools.settings import forget_runtime

    forget_runtime()


@pytest.fixture
def farm():
    """Real forward proxies on loopback (`tests/proxy_server.py`): `farm.proxy("a")`, `farm.block("a")`…"""
    from tests.proxy_server import ProxyFarm

    with ProxyFarm() as running:
        yield running


@pytest.fixture(autouse=True)
def _fast_passwords(settings) -> None:
    # The default hasher spends most of a second on every login; no test is about hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
