"""Token files -> accounts: the one parser behind `import_tokens` and the admin.

Accepted, and freely mixed line by line:

- plain text, one token per line: `eyJ…`, `sso=eyJ…`, or a whole cookie header
  (`a=b; sso=eyJ…; sso-rw=eyJ…`), which yields its `sso` value; anything after
  a `;` that is not the `sso` cookie is dropped (`eyJ…; Path=/`);
- JSON Lines: a JSON string, or an object with `token` (or `sso`) and optional
  `tier`, `note`, `priority` (int), `max_concurrent` (int >= 1, or null for the
  runtime default) and `proxy` (a proxy URL: the account is bound to that `Proxy`
  row, created as a manual proxy when new), per line;
- a JSON list of such strings or objects (the file starts with `[`).

Blank lines and `#` comments are skipped. Tokens are never echoed back: reasons
for refusing a line name the line number and the problem only (proxy passwords
are masked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from pools.models import Account, Proxy, ProxySource, Tier
from pools.proxies.urls import normalize_proxy_url

# RFC 6265 cookie-octet: what a cookie value can hold (no spaces, quotes, commas, `;` or `\`).
_COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+$")
_COOKIE_PAIR = re.compile(r"^[A-Za-z0-9_.!#$%&'*+^`|~-]+=.*[^=]")
_WHITESPACE = re.compile(r"\s*")

# Invalid lines listed in the summary; the rest are counted.
MAX_LISTED = 10
BATCH = 500
# The columns are 32-bit integers on every backend we run on.
INT_MAX = 2**31 - 1
PROXY_URL_MAX = Proxy._meta.get_field("url").max_length or 500


class InvalidToken(ValueError):
    """One entry cannot be turned into a token; the message says why without quoting it."""


class TokenFileError(ValueError):
    """The file as a whole cannot be parsed (a JSON list that is not valid JSON)."""


class StrictImportError(TokenFileError):
    """A strict import met invalid lines, so nothing was written; the message lists them."""

    def __init__(self, invalid: list[InvalidLine]) -> None:
        self.invalid = invalid
        super().__init__(f"{len(invalid)} invalid, nothing imported ({_listed(invalid)})")


@dataclass(frozen=True)
class TokenEntry:
    line: int
    token: str = field(repr=False)
    tier: str
    note: str = ""
    priority: int = 0
    max_concurrent: int | None = None
    proxy_url: str = field(default="", repr=False)  # normalised; "" = no binding


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
            bad += f" ({_listed(self.invalid)})"
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


def parse_tokens(
    text: str,
    *,
    default_tier: str = Tier.BASIC,
    default_priority: int = 0,
    default_max_concurrent: int | None = None,
) -> ParsedTokens:
    """Parse a whole file. Raises TokenFileError only when a JSON list is malformed.

    The defaults apply to entries that do not set their own (an object's explicit
    `"max_concurrent": null` is its own: the runtime default).
    """
    if default_tier not in Tier.values:
        raise ValueError(f"unknown tier {default_tier!r}")
    defaults = _Defaults(
        default_tier, _priority(default_priority), _max_concurrent(default_max_concurrent, "max concurrent")
    )
    text = text.lstrip("\ufeff")
    items = _json_list_items(text) if text.lstrip().startswith("[") else _line_items(text)
    parsed = ParsedTokens()
    seen: set[str] = set()
    for line, item in items:
        try:
            entry = _entry(line, item, defaults)
        except InvalidToken as exc:
            parsed.invalid.append(InvalidLine(line, str(exc)))
            continue
        if entry.token in seen:
            parsed.duplicates += 1
            continue
        seen.add(entry.token)
        parsed.entries.append(entry)
    return parsed


def import_tokens(
    text: str,
    *,
    default_tier: str = Tier.BASIC,
    dry_run: bool = False,
    strict: bool = False,
    default_priority: int = 0,
    default_max_concurrent: int | None = None,
) -> ImportResult:
    """Parse `text` and create the accounts it names that do not exist yet, in one transaction.

    `strict`: any invalid line raises StrictImportError before anything is written.
    Proxies named by new accounts are found by URL or created (source manual).
    """
    parsed = parse_tokens(
        text, default_tier=default_tier, default_priority=default_priority,
        default_max_concurrent=default_max_concurrent,
    )
    if strict and parsed.invalid:
        raise StrictImportError(parsed.invalid)
    with transaction.atomic():
        existing: set[str] = set()
        tokens = [entry.token for entry in parsed.entries]
        for start in range(0, len(tokens), BATCH):
            chunk = tokens[start : start + BATCH]
            existing.update(Account.objects.filter(token__in=chunk).values_list("token", flat=True))
        entries = [entry for entry in parsed.entries if entry.token not in existing]
        proxies = {} if dry_run else _proxies({entry.proxy_url for entry in entries if entry.proxy_url})
        new = [
            Account(
                token=entry.token, tier=entry.tier, note=entry.note, priority=entry.priority,
                max_concurrent=entry.max_concurrent, proxy=proxies.get(entry.proxy_url),
            )
            for entry in entries
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


@dataclass(frozen=True)
class _Defaults:
    tier: str
    priority: int
    max_concurrent: int | None


def _listed(invalid: list[InvalidLine]) -> str:
    listed = "; ".join(str(item) for item in invalid[:MAX_LISTED])
    more = len(invalid) - MAX_LISTED
    return f"{listed}{f'; and {more} more' if more > 0 else ''}"


def _proxies(urls: set[str]) -> dict[str, Proxy]:
    """The Proxy row for each normalised URL, created (manual) where there is none."""
    found = {proxy.url: proxy for proxy in Proxy.objects.filter(url__in=urls)}
    for url in sorted(urls - found.keys()):
        found[url] = Proxy.objects.create(url=url, source=ProxySource.MANUAL)
    return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _priority(value: Any) -> int:
    if not _is_int(value):
        raise InvalidToken("priority must be an integer")
    if not -INT_MAX - 1 <= value <= INT_MAX:
        raise InvalidToken("priority is out of range")
    return int(value)


def _max_concurrent(value: Any, name: str = "max_concurrent") -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise InvalidToken(f"{name} must be a whole number of at least 1, or null")
    if value > INT_MAX:
        raise InvalidToken(f"{name} is out of range")
    return int(value)


def _proxy_url(value: Any) -> str:
    """The normalised proxy URL, or "" for none; the reason for refusing never shows the password."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise InvalidToken("proxy must be a URL string")
    try:
        url = normalize_proxy_url(value)
    except ValueError as exc:
        raise InvalidToken(_without_password(str(exc), value)) from None
    if len(url) > PROXY_URL_MAX:
        raise InvalidToken(f"proxy URL is longer than {PROXY_URL_MAX} characters")
    return url


def _without_password(message: str, url: str) -> str:
    # normalize_proxy_url masks `scheme://user:pass@…`, but not a URL it cannot split (no `://`).
    rest = url.strip().partition("://")[2] or url.strip()
    userinfo, at, _ = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and password:
        message = message.replace(f"{userinfo}@", f"{user}:****@")
        if f":{password}@" in message:  # whatever shape it took, the password does not leave
            return "invalid proxy URL (not shown: it holds a password)"
    return message


def _entry(line: int, item: Any, defaults: _Defaults) -> TokenEntry:
    if isinstance(item, InvalidToken):
        raise item
    default_tier = defaults.tier
    if isinstance(item, str):
        return TokenEntry(
            line, normalize_token(item), default_tier, priority=defaults.priority,
            max_concurrent=defaults.max_concurrent,
        )
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
    priority = defaults.priority if item.get("priority") is None else _priority(item["priority"])
    limit = _max_concurrent(item["max_concurrent"]) if "max_concurrent" in item else defaults.max_concurrent
    return TokenEntry(
        line, normalize_token(raw), tier.lower(), note.strip()[:200], priority=priority, max_concurrent=limit,
        proxy_url=_proxy_url(item.get("proxy")),
    )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
