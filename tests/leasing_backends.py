"""Each leasing backend (in-process, PostgreSQL rows, Redis) as pytest fixtures, for the suites that run on all three.

Accounts live in SQLite for the local backend and in the `pg` database for the
other two (Redis holds only the leases), as in the deployments they stand for.
A test module loads the fixtures as a plugin (importing them would trip ruff's F811,
importing anything else from here pytest's assertion rewriting), and lets its tests
use both databases:

    pytest_plugins = ["tests.leasing_backends"]
    pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "pg"], available_apps=["pools"])
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from pools import leasing
from pools.leasing.base import LeaseBackend
from pools.leasing.local import LocalBackend
from pools.leasing.postgres import PostgresBackend
from pools.leasing.redis import RedisBackend
from pools.models import Account, Quota
from pools.settings import update_runtime
from tests.conftest import asettle_usage

REDIS_TEST_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(params=["local", "postgres", "redis"])
async def build(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., LeaseBackend]]:
    """`build(ttl=…)`: a fresh backend of the parametrised kind, installed as the one `lease()` uses."""
    made: list[LeaseBackend] = []

    def build(ttl: float = 60.0) -> LeaseBackend:
        backend: LeaseBackend
        if request.param == "local":
            backend = LocalBackend(using="default", ttl=ttl)
        elif request.param == "postgres":
            backend = PostgresBackend(using="pg", ttl=ttl)
        else:
            # Keys of our own: other runs (cluster tests) share this Redis db.
            backend = RedisBackend(using="pg", ttl=ttl, url=REDIS_TEST_URL, prefix=f"test:{uuid.uuid4().hex}:")
        made.append(backend)
        leasing.use(backend)
        return backend

    yield build
    await asettle_usage()  # before the connections close: a later flush would open one again
    for backend in made:
        if isinstance(backend, RedisBackend):
            client = backend.client()
            keys = [key async for key in client.scan_iter(match=f"{backend.prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
    # The ORM ran in asgiref's worker thread: close its connections, or the test database cannot be dropped.
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@pytest.fixture
def backend(build: Callable[..., LeaseBackend]) -> LeaseBackend:
    return build()


@pytest.fixture
def settings_(transactional_db: None) -> Callable[..., Awaitable[None]]:
    """`await settings_(queue_timeout=0.1)`: change the runtime settings `lease()` reads."""

    async def change(**values: object) -> None:
        await sync_to_async(update_runtime)(**values)

    return change


class Cast:
    """Accounts in the backend's database: `await cast.add(tier="super", priority=2)`."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.n = 0

    async def add(self, **fields: object) -> Account:
        fields.setdefault("tier", "basic")
        self.n += 1
        return await Account.objects.using(self.using).acreate(token=f"eyJtoken{self.n:04d}secretpart", **fields)

    async def get(self, account: Account) -> Account:
        return await Account.objects.using(self.using).aget(pk=account.pk)

    async def quota(self, account: Account, mode: str, **fields: object) -> Quota:
        return await Quota.objects.using(self.using).acreate(account=account, mode=mode, **fields)

    async def get_quota(self, account: Account, mode: str) -> Quota:
        return await Quota.objects.using(self.using).aget(account=account, mode=mode)


@pytest.fixture
def cast(backend: LeaseBackend) -> Cast:
    return Cast(backend.using)
