"""`manage.py import_tokens FILE|-`: add Grok accounts from a token file or stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError

from pools.importing import TokenFileError, import_tokens
from pools.models import Tier


class Command(BaseCommand):
    help = (
        "Import Grok SSO tokens: one per line (bare, `sso=…` or a cookie header), "
        "JSON Lines, or a JSON list of strings or {token, tier, note} objects. "
        "Duplicates are skipped; prints one summary line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="token file to read, or - for stdin")
        parser.add_argument(
            "--type",
            dest="tier",
            choices=Tier.values,
            default=Tier.BASIC,
            help="tier for entries that do not name one (default: basic)",
        )
        parser.add_argument("--dry-run", action="store_true", help="parse and count, write nothing")

    def handle(self, *args: Any, path: str, tier: str, dry_run: bool, **options: Any) -> None:
        text = self.read(path)
        try:
            result = import_tokens(text, default_tier=tier, dry_run=dry_run)
        except TokenFileError as exc:
            raise CommandError(f"{path}: {exc}") from exc
        except IntegrityError as exc:
            # Only when another import added the same token between our check and insert.
            raise CommandError("another import added some of these tokens meanwhile; run it again") from exc
        self.stdout.write(result.summary())

    def read(self, path: str) -> str:
        if path == "-":
            return sys.stdin.read()
        try:
            return Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CommandError(f"cannot read {path}: not UTF-8 text") from exc
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
