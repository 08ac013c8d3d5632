"""`manage.py serve`: run the gateway under daphne on HOST:PORT (from the environment or .env)."""

from __future__ import annotations

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the gateway (daphne) on HOST:PORT."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=None, help="default: HOST (127.0.0.1)")
        parser.add_argument("--port", type=int, default=None, help="default: PORT (8000)")

    def handle(self, *args, host: str | None, port: int | None, **options) -> None:
        host = host or settings.HOST
        port = port or settings.PORT
        self.stdout.write(f"grok2api listening on http://{host}:{port}  (admin: /admin/, API: /v1/)")
        self.stdout.flush()
        CommandLineInterface().run(["-b", host, "-p", str(port), "grok2api.asgi:application"])
