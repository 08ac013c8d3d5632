"""`manage.py runtime list|get NAME|set NAME VALUE`: the admin's runtime settings page, from a shell.

Values are validated by the same model checks as the admin, and a `set` reaches
every running worker within a second.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pools.admin.runtime import SECRETS, _masked
from pools.models import RuntimeSettings
from pools.settings import load_row, update_runtime

EDITABLE = [f for f in RuntimeSettings._meta.concrete_fields if f.editable and f.name != "id"]


class Command(BaseCommand):
    help = "Show or change the runtime settings (as in the admin)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every setting and its value")
        get = sub.add_parser("get", help="one setting")
        get.add_argument("name")
        put = sub.add_parser("set", help="change one setting")
        put.add_argument("name")
        put.add_argument("value")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        row = load_row()
        if action == "list":
            for field in EDITABLE:
                self.stdout.write(f"{field.name} = {self._show(field.name, getattr(row, field.name))}")
            self.stdout.write(f"version = {row.version}")
            return
        field = self._field(options["name"])
        if action == "get":
            self.stdout.write(self._show(field.name, getattr(row, field.name)))
            return
        try:
            value = field.to_python(options["value"])
            runtime = update_runtime(**{field.name: value})
        except ValidationError as exc:
            hint = f" (choose one of: {', '.join(str(c) for c, _ in field.choices)})" if field.choices else ""
            raise CommandError("; ".join(exc.messages) + hint) from exc
        self.stdout.write(f"{field.name} = {self._show(field.name, value)} (version {runtime.version})")

    def _field(self, name: str) -> Any:
        for field in EDITABLE:
            if field.name == name:
                return field
        raise CommandError(f"unknown setting {name!r}; `manage.py runtime list` shows them all")

    @staticmethod
    def _show(name: str, value: object) -> str:
        return _masked(name, str(value)) if name in SECRETS else str(value)
