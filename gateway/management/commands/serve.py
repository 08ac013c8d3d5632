"""`manage.py serve`: run the gateway under daphne on HOST:PORT, in WEB_CONCURRENCY worker processes.

With one worker, daphne runs in this process. With more, this process binds the
socket once and supervises N daphne workers that accept on it (the kernel spreads
connections), restarting a worker that dies. Several workers need PostgreSQL and
Redis (system checks grok2api.E001/E002 refuse SQLite or a missing REDIS_URL).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand

APP = "grok2api.asgi:application"


class Command(BaseCommand):
    help = "Serve the gateway (daphne) on HOST:PORT with WEB_CONCURRENCY worker processes."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=None, help="default: HOST (127.0.0.1)")
        parser.add_argument("--port", type=int, default=None, help="default: PORT (8000)")
        parser.add_argument("--workers", type=int, default=None, help="default: WEB_CONCURRENCY (1)")

    def handle(self, *args, host: str | None, port: int | None, workers: int | None, **options) -> None:
        host = host or settings.HOST
        port = port if port is not None else settings.PORT
        workers = workers or settings.WEB_CONCURRENCY
        self.stdout.write(
            f"grok2api listening on http://{host}:{port}  (admin: /admin/, API: /v1/, workers: {workers})"
        )
        self.stdout.flush()
        if workers <= 1:
            CommandLineInterface().run(["-b", host, "-p", str(port), APP])
            return
        self._supervise(host, port, workers)

    def _supervise(self, host: str, port: int, workers: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1024)
        listener.set_inheritable(True)
        fd = listener.fileno()
        command = [sys.executable, "-m", "daphne", "--fd", str(fd), APP]
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
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        listener.close()
