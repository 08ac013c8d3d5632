"""Token files -> accounts: the one parser behind `import_tokens` and the admin.

Accepted, and freely mixed line by line:

- plain text, one token per line: `eyJ…`, `sso=eyJ…`, or a whole cookie header
  (`a=b; sso=eyJ…; sso-rw=eyJ…`), which yields its `sso` value; anything after
  a `;` that is not the `sso` cookie is dropped (`eyJ…; Path=/`);
- JSON Lines: a JSON string, or an object with `token` (or `sso`) and optional
  `tier` and `note`, per line;
- a JSON list of such strings or objects (the file starts with `[`).

Blank lines and `#` comments are skipped. Tokens are never echoed back: reasons
for refusing a line name the line number and the problem only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from pools.models import Account, Tier

# RFC 6265 cookie-octet: what a cookie value can hold (no spaces, quotes, commas, `;` or `\`).
_COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+$")
_COOKIE_PAIR = re.compile(r"^[A-Za-z0-9_.!#$%&'*+^`|~-]+=.*[^=]")
_WHITESPACE = re.compile(r"\s*")

# Invalid lines listed in the summary; the rest are counted.
MAX_LISTED = 10
BATCH = 500


class InvalidToken(ValueError):
    """One entry cannot be turned into a token; the message says why without quoting it."""


class TokenFileError(ValueError):
    """The file as a whole cannot be parsed (a JSON list that is not valid JSON)."""


@dataclass(frozen=True)
class TokenEntry:
    line: int
    token: str = field(repr=False)
    tier: str
    note: str = ""


@dataclass(frozen=True)
class InvalidLine:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ParsedTokens:
    entries: list[TokenEntry] = field(default_factory=list)
    duplicates: int = 0  # repeated within the file
    invalid: list[InvalidLine] = field(default_factory=list)


@dataclass
class ImportResult:
    imported: int
    duplicates: int  # within the file plus already in the database
    invalid: list[InvalidLine]
    dry_run: bool = False

    def summary(self) -> str:
        """One line: `imported 12, skipped 3 duplicates, 1 invalid (line 7: empty token)`."""
        dups = f"{self.duplicates} duplicate{'s' if self.duplicates != 1 else ''}"
        bad = f"{len(self.invalid)} invalid"
        if self.invalid:
            listed = "; ".join(str(item) for item in self.invalid[:MAX_LISTED])
            more = len(self.invalid) - MAX_LISTED
            bad += f" ({listed}{f'; and {more} more' if more > 0 else ''})"
        if self.dry_run:
            return f"dry run: would import {self.imported}, skip {dups}, {bad}; nothing written"
        return f"imported {self.imported}, skipped {dups}, {bad}"


def normalize_token(raw: str) -> str:
    """The bare `sso` value from a token, `sso=…` or a cookie header; raises InvalidToken."""
    parts = [part.strip() for part in raw.strip().split(";")]
    cookies: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if sep:
            cookies.setdefault(name.strip(), value.strip())
    if "sso" in cookies:
        token = cookies["sso"]
    elif "sso-rw" in cookies:  # Grok sets both to the same value
        token = cookies["sso-rw"]
    elif _COOKIE_PAIR.match(parts[0]):
        # `name=value; …` without an sso cookie. (A bare token may end in base64 `=`
        # padding, which the pattern does not take for a cookie.)
        raise InvalidToken("no sso cookie in the cookie string")
    else:
        token = parts[0]
    token = token.strip('"')
    if not token:
        raise InvalidToken("empty token")
    if not _COOKIE_VALUE.match(token):
        raise InvalidToken("token has characters a cookie cannot hold")
    return token


def parse_tokens(text: str, *, default_tier: str = Tier.BASIC) -> ParsedTokens:
    """Parse a whole file. Raises TokenFileError only when a JSON list is malformed."""
    if default_tier not in Tier.values:
        raise ValueError(f"unknown tier {default_tier!r}")
    text = text.lstrip("\ufeff")
    items = _json_list_items(text) if text.lstrip().startswith("[") else _line_items(text)
    parsed = ParsedTokens()
    seen: set[str] = set()
    for line, item in items:
        try:
            entry = _entry(line, item, default_tier)
        except InvalidToken as exc:
            parsed.invalid.append(InvalidLine(line, str(exc)))
            continue
        if entry.token in seen:
            parsed.duplicates += 1
            continue
        seen.add(entry.token)
        parsed.entries.append(entry)
    return parsed


def import_tokens(text: str, *, default_tier: str = Tier.BASIC, dry_run: bool = False) -> ImportResult:
    """Parse `text` and create the accounts it names that do not exist yet, in one transaction."""
    parsed = parse_tokens(text, default_tier=default_tier)
    with transaction.atomic():
        existing: set[str] = set()
        tokens = [entry.token for entry in parsed.entries]
        for start in range(0, len(tokens), BATCH):
            chunk = tokens[start : start + BATCH]
            existing.update(Account.objects.filter(token__in=chunk).values_list("token", flat=True))
        new = [
            Account(token=entry.token, tier=entry.tier, note=entry.note)
            for entry in parsed.entries
            if entry.token not in existing
        ]
        if not dry_run:
            Account.objects.bulk_create(new, batch_size=BATCH)
    return ImportResult(
        imported=len(new),
        duplicates=parsed.duplicates + len(existing),
        invalid=parsed.invalid,
        dry_run=dry_run,
    )


def _line_items(text: str) -> Iterator[tuple[int, Any]]:
    """Plain text and JSON Lines: (line number, str or decoded JSON value)."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line[0] in '{["':
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                if line[0] == "{" and number == 1 and _is_json(text):
                    raise TokenFileError(
                        "a JSON object spanning several lines is not a token file: "
                        "use a JSON list, or one object per line (JSON Lines)"
                    ) from None
                yield number, InvalidToken("not valid JSON")
            continue
        yield number, line


def _json_list_items(text: str) -> list[tuple[int, Any]]:
    """Decode a JSON list one element at a time, so each keeps the line it starts on."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []
    pos, line, counted = text.index("[") + 1, 1, 0

    def skip(at: int) -> int:
        return _WHITESPACE.match(text, at).end()  # type: ignore[union-attr]

    pos = skip(pos)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line += text.count("\n", counted, pos)
            counted = pos
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise TokenFileError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
            items.append((line, value))
            pos = skip(pos)
            if text.startswith(",", pos):
                pos = skip(pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                where = line + text.count("\n", counted, pos)
                raise TokenFileError(f"not valid JSON (line {where}: expected ',' or ']')")
    if text[pos:].strip():
        raise TokenFileError("not valid JSON: extra data after the list")
    return items


def _entry(line: int, item: Any, default_tier: str) -> TokenEntry:
    if isinstance(item, InvalidToken):
        raise item
    if isinstance(item, str):
        return TokenEntry(line, normalize_token(item), default_tier)
    if not isinstance(item, dict):
        raise InvalidToken("expected a token string or an object with a token")
    raw = item.get("token", item.get("sso"))
    if raw is None:
        raise InvalidToken("object has no token (or sso) field")
    if not isinstance(raw, str):
        raise InvalidToken("token must be a string")
    tier = item.get("tier") or default_tier
    if not isinstance(tier, str) or tier.lower() not in Tier.values:
        raise InvalidToken(f"unknown tier {str(tier)[:20]!r}")
    note = item.get("note") or ""
    if not isinstance(note, str):
        raise InvalidToken("note must be a string")
    return TokenEntry(line, normalize_token(raw), tier.lower(), note.strip()[:200])


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
