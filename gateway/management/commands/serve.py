"""`manage.py serve`: run the gateway on HOST:PORT, in WEB_CONCURRENCY worker processes.

The ASGI server is `ASGI_SERVER` (or `--server`): uvicorn on uvloop and httptools by
default, daphne as the alternative. docs/benchmarks.md has the measurements that
picked the default: at 100 streams uvicorn added the least time to the first token
and used the least CPU per request; daphne's Twisted reactor cannot run on uvloop.

With one worker, the server runs in this process. With more, this process binds the
socket once and supervises N workers that accept on it (the kernel spreads
connections), restarting a worker that dies. Several workers need PostgreSQL and
Redis (system checks grok2api.E001/E002 refuse SQLite or a missing REDIS_URL).
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, TypedDict, Unpack

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

if TYPE_CHECKING:
    import uvicorn

APP = "grok2api.asgi:application"
SERVERS = ("uvicorn", "daphne")
# Seconds a stopping worker waits for open answers before it closes them.
GRACEFUL_SHUTDOWN = 30


def refuse_busy_port(host: str, port: int, variable: str, example: str) -> None:
    """Fail in one line naming `variable` if `host:port` cannot be bound, before anything says "listening".

    A probe bind (with SO_REUSEADDR, as the servers bind) rather than a connect: it also catches a port this
    user may not bind and a host that is not ours, and a socket in TIME_WAIT does not count as busy.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): set {variable} to a free "
                               f"port, e.g. {example}") from None


def worker_command(server: str, fd: int) -> list[str]:
    """The command line of one supervised worker, accepting on the inherited socket `fd`."""
    if server == "uvicorn":
        # Not `uvicorn --fd`: uvicorn takes that descriptor for a Unix socket, so its connections
        # miss TCP_NODELAY and small SSE writes wait out delayed ACKs (+40 ms per answer, measured).
        return [sys.executable, str(settings.BASE_DIR / "manage.py"), "serve", "--server", "uvicorn",
                "--fd", str(fd)]
    return [sys.executable, "-m", "daphne", "--fd", str(fd), APP]


class Command(BaseCommand):
    help = "Serve the gateway (uvicorn or daphne) on HOST:PORT with WEB_CONCURRENCY worker processes."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=None, help="default: HOST (127.0.0.1)")
        parser.add_argument("--port", type=int, default=None, help="default: PORT (8000)")
        parser.add_argument("--workers", type=int, default=None, help="default: WEB_CONCURRENCY (1)")
        parser.add_argument("--server", choices=SERVERS, default=None, help="default: ASGI_SERVER (uvicorn)")
        parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a supervised worker

    def handle(self, *args, host: str | None, port: int | None, workers: int | None, server: str | None,
               fd: int | None, **options) -> None:
        if fd is not None:
            self._serve_socket(socket.socket(fileno=fd))  # one of a supervisor's uvicorn workers
            return
        host = host or settings.HOST
        port = port if port is not None else settings.PORT
        workers = workers or settings.WEB_CONCURRENCY
        server = server or settings.ASGI_SERVER
        if server not in SERVERS:
            raise CommandError(f"ASGI_SERVER must be one of {', '.join(SERVERS)}, not {server!r}")
        refuse_busy_port(host, port, "PORT", f"`PORT={port + 1} make run`")
        self.stdout.write(
            f"grok2api listening on http://{host}:{port}  (admin: /admin/, API: /v1/, "
            f"workers: {workers}, server: {server})"
        )
        self.stdout.flush()
        if workers <= 1:
            self._serve_here(server, host, port)
            return
        self._supervise(server, host, port, workers)

    def _serve_here(self, server: str, host: str, port: int) -> None:
        if server == "daphne":
            from daphne.cli import CommandLineInterface

            CommandLineInterface().run(["-b", host, "-p", str(port), APP])
            return
        uvicorn_server(host=host, port=port).run()

    def _serve_socket(self, sock: socket.socket) -> None:
        uvicorn_server().run(sockets=[sock])

    def _supervise(self, server: str, host: str, port: int, workers: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1024)
        listener.set_inheritable(True)
        fd = listener.fileno()
        command = worker_command(server, fd)
        procs = [subprocess.Popen(command, pass_fds=(fd,)) for _ in range(workers)]
        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping:
            for i, proc in enumerate(procs):
                if proc.poll() is not None and not stopping:
                    self.stderr.write(f"worker {proc.pid} exited with {proc.returncode}; starting another")
                    procs[i] = subprocess.Popen(command, pass_fds=(fd,))
            time.sleep(0.5)
        for proc in procs:
            try:
                proc.wait(GRACEFUL_SHUTDOWN + 15)
            except subprocess.TimeoutExpired:
                proc.kill()
        listener.close()


class Where(TypedDict, total=False):
    host: str
    port: int


def uvicorn_server(**where: Unpack[Where]) -> uvicorn.Server:
    """The uvicorn server every worker runs (and the test suite's gateway); `where`: host and port."""
    import uvicorn  # only when it serves: `serve --server daphne` must not need it

    # workers=1: uvicorn would otherwise read WEB_CONCURRENCY and fork workers of its own.
    # log_config=None: Django's LOGGING (already configured) stays in charge of every line.
    config = uvicorn.Config(APP, workers=1, loop="uvloop", http="httptools", lifespan="on", access_log=False,
                            log_config=None, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN, **where)
    return uvicorn.Server(config)
