"""Several gateway worker processes on PostgreSQL + Redis: the production shape, on loopback.

    with Cluster(workers=2, fake_url=fake_grok.base_url) as cluster:
        cluster.manage("import_tokens", "-", "--type", "basic", input="tok-1\\n")
        httpx.post(cluster.urls[0] + "/v1/chat/completions", headers=cluster.headers, json=...)
        cluster.sql("select count(*) from pools_account")
        cluster.kill(1)                      # SIGKILL one worker

Each cluster gets a fresh PostgreSQL database (dropped afterwards) and Redis db 15
(flushed), and each worker its own port, so a test can talk to one worker at a time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/15"
API_KEY = "sk-cluster"


def eventually(check, seconds: float = 10) -> bool:
    """Poll `check` until it holds (True) or `seconds` pass (False): work another process finishes soon."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self, workers: int = 2, *, fake_url: str, redis: bool = True, env: dict[str, str] | None = None,
                 redis_url: str = REDIS_URL):
        """`redis_url`: another server than the shared one (a test that restarts its own)."""
        self.workers = workers
        self.fake_url = fake_url
        self.use_redis = redis
        self.extra_env = env or {}
        self.database = f"grok2api_mw_{uuid.uuid4().hex[:10]}"
        self.database_url = f"postgres://postgres@127.0.0.1:5432/{self.database}"
        self.redis_url = redis_url if redis else ""
        self.headers = {"Authorization": f"Bearer {API_KEY}"}
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="grok2api-mw-")

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
        env.update({
            "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, "API_KEY": API_KEY,
            "GROK_BASE_URL": self.fake_url, "GROK_ASSETS_URL": self.fake_url, "DATA_DIR": self._tmp.name,
            "SECRET_KEY": "cluster-test-key", "LOG_LEVEL": "WARNING",
            # Jobs would sync quotas against the fake at the first request; tests that want them say so.
            "PERIODIC_JOBS": "false",
        })
        env.update(self.extra_env)
        return env

    def __enter__(self) -> Cluster:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        if self.use_redis:
            redis.Redis.from_url(self.redis_url).flushdb()
        try:
            self.manage("migrate", "--noinput", "-v", "0")
            for _ in range(self.workers):
                self.start_worker()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self._tmp.cleanup()

    def start_worker(self) -> int:
        """Start one more worker process; returns its index."""
        port = free_port()
        log = open(Path(self._tmp.name) / f"worker-{len(self.procs)}.log", "w")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.ports.append(port)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log(len(self.procs) - 1)}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return len(self.procs) - 1
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not come up in 30 s")
            time.sleep(0.1)

    def log(self, index: int) -> str:
        return (Path(self._tmp.name) / f"worker-{index}.log").read_text()

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        self.procs[index].send_signal(sig)
        self.procs[index].wait(10)

    def manage(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, input=input,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []
