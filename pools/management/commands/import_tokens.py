"""`manage.py import_tokens FILE|-`: add Grok accounts from a token file or stdin.

Exit status: 0 when something was imported (or would be, on a dry run) or every
line was a duplicate; 1 when nothing was imported and some lines were invalid,
or, with `--strict`, when any line was invalid (then nothing is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError

from pools.importing import INT_MAX, StrictImportError, TokenFileError, import_tokens
from pools.models import Tier


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not -INT_MAX - 1 <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(f"out of range: {text}")
    return value


def _max_concurrent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


class Command(BaseCommand):
    help = (
        "Import Grok SSO tokens: one per line (bare, `sso=…` or a cookie header), "
        "JSON Lines, or a JSON list of strings or {token, tier, note, priority, max_concurrent, proxy} objects. "
        "Duplicates are skipped; prints one summary line. Exits 1 when nothing was imported and lines were invalid."
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
        parser.add_argument(
            "--strict", action="store_true", help="any invalid line fails the import: nothing is written"
        )
        parser.add_argument(
            "--priority", type=_priority, default=0, metavar="N",
            help="priority for entries that do not set one (default: 0; higher is leased first)",
        )
        parser.add_argument(
            "--max-concurrent", type=_max_concurrent, default=None, metavar="N",
            help="in-flight limit for entries that do not set one (default: the runtime default)",
        )

    def handle(
        self, *args: Any, path: str, tier: str, dry_run: bool, strict: bool = False, priority: int = 0,
        max_concurrent: int | None = None, **options: Any,
    ) -> None:
        text = self.read(path)
        try:
            result = import_tokens(
                text, default_tier=tier, dry_run=dry_run, strict=strict,
                default_priority=priority, default_max_concurrent=max_concurrent,
            )
        except StrictImportError as exc:
            raise CommandError(f"{path}: --strict: {exc}") from exc
        except TokenFileError as exc:
            raise CommandError(f"{path}: {exc}") from exc
        except IntegrityError as exc:
            # Only when another import added the same token between our check and insert.
            raise CommandError("another import added some of these tokens meanwhile; run it again") from exc
        self.stdout.write(result.summary())
        if result.imported == 0 and result.invalid:
            # Scripts must be able to tell a file of only bad lines from a successful import.
            raise CommandError(f"{path}: nothing imported: {len(result.invalid)} invalid, see the summary above")

    def read(self, path: str) -> str:
        if path == "-":
            return sys.stdin.read()
        try:
            return Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CommandError(f"cannot read {path}: not UTF-8 text") from exc
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
