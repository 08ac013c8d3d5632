"""The processes a benchmark run starts: the fake upstream, a database backend, the gateway.

Each is a context manager that owns its process (or database) and stops or drops
it on the way out, by process id, never by name.

    with Fake() as fake, Backend("embedded") as db:
        db.setup(fake.url, TOKENS)
        with Gateway("daphne", db, fake.url) as gw:
            gw.pids()                       # the server's process tree, for /proc sampling
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from importlib import metadata
from pathlib import Path

from bench import procstat

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
API_KEY = "sk-bench"
APP = "grok2api.asgi:application"
SERVERS = ("daphne", "uvicorn", "granian")
MODES = ("embedded", "scaleout")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def installed(server: str) -> bool:
    return importlib.util.find_spec(server) is not None


def versions() -> dict[str, str]:
    out = {}
    for name in ("django", "django-ninja", "daphne", "twisted", "uvicorn", "granian", "curl_cffi", "py-spy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    out["python"] = sys.version.split()[0]
    return out


def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http("GET", url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, children: dict[int, int | None]) -> None:
    """SIGTERM the root (servers stop their own workers), then SIGKILL any child left behind.

    `children` maps pid -> start time as recorded while the server ran: a pid is only
    signalled if it still names that same process.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid, start in children.items():
        if pid != proc.pid and start is not None and procstat.started(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}


class Fake:
    """`python -m gateway.fakegrok` in its own process."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / "fakegrok.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Fake:
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.fakegrok", "--port", str(self.port)],
                cwd=ROOT, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
            )
        _wait_up(self.url + "/_fake/stats", self.proc, self.log, timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop(self.proc, {})

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def in_flight(self) -> int:
        """Streams the fake is still serving (a client that left is only noticed at its next write)."""
        status, body = http("GET", self.url + "/_fake/stats")
        return sum(s.get("in_flight", 0) for s in json.loads(body).values()) if status == 200 else 0

    def lift_quota(self, tokens: list[str], mode: str = "fast") -> None:
        """A quota nobody exhausts in a run, so no request is refused with 429."""
        for token in tokens:
            body = {"token": token, "mode": mode, "remaining": 10**9, "total": 10**9}
            status, text = http("POST", self.url + "/_fake/quota", body)
            if status != 200:
                raise RuntimeError(f"fake refused the quota for {token}: {status} {text[:200]!r}")


class Backend:
    """Where the gateway keeps its state: SQLite in a temp DATA_DIR (embedded), or a
    throwaway PostgreSQL database plus Redis db 13 (scale-out)."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.tmp = tempfile.TemporaryDirectory(prefix=f"grok2api-bench-{mode}-")
        self.dir = Path(self.tmp.name)
        self.database = f"grok2api_bench_{uuid.uuid4().hex[:10]}" if mode == "scaleout" else ""
        self.notes: list[str] = []

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:5432/{self.database}" if self.database else ""

    @property
    def redis_url(self) -> str:
        return REDIS_URL if self.mode == "scaleout" else ""

    def env(self, fake_url: str, **extra: str) -> dict[str, str]:
        env = _clean_env()
        env.update({
            "DATA_DIR": str(self.dir), "SECRET_KEY": "bench-secret-key", "API_KEY": API_KEY, "DEBUG": "False",
            "GROK_BASE_URL": fake_url, "GROK_ASSETS_URL": fake_url, "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "grok2api.settings",
        })
        env.update(extra)
        return env

    def db_counters(self) -> dict[str, int] | None:
        """Commits and rows written in this run's PostgreSQL database so far (None on SQLite).

        PostgreSQL publishes a backend's counters when it goes idle, at most once a
        second, so read them a second or more after the work ends.
        """
        if not self.database:
            return None
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                "WHERE datname = %s", (self.database,)).fetchone()
        return {"commits": int(row[0]), "rows_written": int(row[1])} if row else None

    def lease_backends(self, fake_url: str) -> dict[str, dict[str, str]]:
        """The leasing backends this state store can be measured with: name -> environment."""
        if self.mode == "embedded":
            return {"sqlite": self.env(fake_url)}
        return {"postgres": self.env(fake_url, REDIS_URL=""), "postgres+redis": self.env(fake_url)}

    def __enter__(self) -> Backend:
        if self.database:
            import psycopg
            import redis

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
            redis.Redis.from_url(REDIS_URL).flushdb()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.database:
            import psycopg
            import redis

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            redis.Redis.from_url(REDIS_URL).flushdb()
        self.tmp.cleanup()

    def manage(self, fake_url: str, *args: str, input: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env(fake_url), input=input,
            capture_output=True, text=True, timeout=180,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout.strip()

    def setup(self, fake_url: str, tokens: list[str]) -> None:
        """Migrate, import the accounts, and lift the per-account in-flight limit."""
        self.manage(fake_url, "migrate", "--noinput", "-v", "0")
        self.notes.append(self.manage(fake_url, "import_tokens", "-", "--type", "basic", input="\n".join(tokens)))
        try:
            self.notes.append(self.manage(fake_url, "runtime", "set", "account_max_concurrent", "1000"))
        except RuntimeError as exc:  # the setting is the leasing work's; say so rather than stop the run
            self.notes.append(f"could not set account_max_concurrent: {str(exc).strip().splitlines()[-1]}")


class Gateway:
    """The gateway under one ASGI server, with 1 (embedded) or 2 (scale-out) workers."""

    def __init__(self, server: str, backend: Backend, fake_url: str, *, workers: int | None = None,
                 wrap: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        if server not in SERVERS:
            raise ValueError(f"unknown server {server!r}: choose one of {', '.join(SERVERS)}")
        self.server = server
        self.backend = backend
        self.fake_url = fake_url
        self.workers = workers or (2 if backend.mode == "scaleout" else 1)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.wrap = wrap or []  # e.g. a profiler that runs the server
        self.extra_env = env or {}
        self.log = backend.dir / f"gateway-{server}-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._known: dict[int, int | None] = {}  # every process seen in the tree: pid -> start time

    def command(self) -> list[str]:
        host, port = "127.0.0.1", str(self.port)
        if self.server in ("daphne", "uvicorn"):  # the documented command: manage.py serve (WEB_CONCURRENCY workers)
            return [sys.executable, "manage.py", "serve", "--server", self.server, "--host", host, "--port", port]
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", host, "--port", port,
               "--no-ws", "--log-level", "warning", APP]
        return [*cmd, "--workers", str(self.workers)] if self.workers > 1 else cmd

    def __enter__(self) -> Gateway:
        env = self.backend.env(self.fake_url, WEB_CONCURRENCY=str(self.workers), **self.extra_env)
        cmd = self.command()
        if self.wrap:
            cmd = [*self.wrap, *cmd[1:]] if cmd[0] == sys.executable else [*self.wrap, *cmd]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_up(self.url + "/health", self.proc, self.log)
            self._wait_workers()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_workers(self) -> None:
        """Give a supervisor time to start every worker, so /proc sampling sees all of them."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len(self.pids()) >= self.workers + (0 if self.workers == 1 else 1):
                break
            time.sleep(0.2)
        time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.pids()
            _stop(self.proc, self._known)
            self.proc = None

    @property
    def pid(self) -> int:
        """The process started by `__enter__` (the supervisor when there are several workers)."""
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        pids = procstat.tree(self.proc.pid)
        for pid in pids:
            self._known.setdefault(pid, procstat.started(pid))
        return pids

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (the leaves of the tree: a supervisor only waits)."""
        pids = self.pids()
        if self.proc is None or len(pids) <= 1:
            return pids
        return [p for p in pids if p != self.proc.pid] or pids
