"""`manage.py import_tokens`: every accepted format, and what it refuses."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from pools.importing import InvalidToken, normalize_token, parse_tokens
from pools.models import Account

pytestmark = pytest.mark.django_db

T1 = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiMSJ9.sig-one_AAAA"
T2 = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiMiJ9.sig-two_BBBB"
T3 = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiMyJ9.sig-three_CC"


def run(tmp_path: Path, content: str, *args: str, name: str = "tokens.txt") -> str:
    path = tmp_path / name
    path.write_text(content)
    out = io.StringIO()
    call_command("import_tokens", str(path), *args, stdout=out)
    return out.getvalue().strip()


def tokens() -> dict[str, tuple[str, str]]:
    return {a.token: (a.tier, a.note) for a in Account.objects.all()}


def test_it_imports_plain_text(tmp_path: Path) -> None:
    summary = run(tmp_path, f"{T1}\nsso={T2}\n", "--type", "basic")
    assert summary == "imported 2, skipped 0 duplicates, 0 invalid"
    assert tokens() == {T1: ("basic", ""), T2: ("basic", "")}


def test_it_applies_the_type_to_entries_without_a_tier(tmp_path: Path) -> None:
    run(tmp_path, f"{T1}\n", "--type", "super")
    assert tokens() == {T1: ("super", "")}


def test_it_takes_the_sso_value_from_a_cookie_string(tmp_path: Path) -> None:
    content = (
        f"_ga=GA1.1.123; sso={T1}; sso-rw={T1}; cf_clearance=abc.def-123\n"
        f"{T2}; Path=/; Domain=.grok.com\n"
        f"i18nextLng=en; sso-rw={T3}\n"
    )
    assert run(tmp_path, content) == "imported 3, skipped 0 duplicates, 0 invalid"
    assert set(tokens()) == {T1, T2, T3}


def test_it_imports_a_json_list(tmp_path: Path) -> None:
    content = json.dumps(
        [T1, {"token": T2, "tier": "super", "note": "team a"}, {"sso": f"sso={T3}", "tier": "heavy"}],
        indent=2,
    )
    assert run(tmp_path, content, name="tokens.json") == "imported 3, skipped 0 duplicates, 0 invalid"
    assert tokens() == {T1: ("basic", ""), T2: ("super", "team a"), T3: ("heavy", "")}


def test_it_imports_json_lines(tmp_path: Path) -> None:
    content = "\n".join(
        [json.dumps(T1), json.dumps({"token": T2, "tier": "super"}), json.dumps({"sso": T3, "note": "x"})]
    )
    assert run(tmp_path, content, name="tokens.jsonl") == "imported 3, skipped 0 duplicates, 0 invalid"
    assert tokens() == {T1: ("basic", ""), T2: ("super", ""), T3: ("basic", "x")}


def test_it_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    content = f"# exported 2025-11-25\n\n   \n{T1}\n  # team b\n{T2}\n"
    assert run(tmp_path, content) == "imported 2, skipped 0 duplicates, 0 invalid"


def test_it_skips_duplicates_in_the_file_and_in_the_database(tmp_path: Path) -> None:
    Account.objects.create(token=T1, tier="super", note="keep")
    content = f"{T1}\n{T2}\nsso={T2}\n{T3}\n{T3}; Path=/\n"
    assert run(tmp_path, content) == "imported 2, skipped 3 duplicates, 0 invalid"
    assert tokens()[T1] == ("super", "keep")
    assert Account.objects.count() == 3


def test_it_reports_an_empty_sso_with_its_line_number(tmp_path: Path) -> None:
    content = f"{T1}\n{T2}\n{T2}\n# comment\n\n\nsso=\n{T3}\n"
    summary = run(tmp_path, content)
    assert summary == "imported 3, skipped 1 duplicate, 1 invalid (line 7: empty token)"


def test_it_lists_every_invalid_line(tmp_path: Path) -> None:
    content = "\n".join(
        [
            T1,
            json.dumps({"token": T2, "tier": "gold"}),
            "sso=",
            "a=b; c=d",
            "two tokens",
            '{"token": ',
            json.dumps({"note": "no token"}),
            json.dumps([T3]),
        ]
    )
    summary = run(tmp_path, content)
    assert summary == (
        "imported 1, skipped 0 duplicates, 7 invalid (line 2: unknown tier 'gold'; line 3: empty token; "
        "line 4: no sso cookie in the cookie string; line 5: token has characters a cookie cannot hold; "
        "line 6: not valid JSON; line 7: object has no token (or sso) field; "
        "line 8: expected a token string or an object with a token)"
    )


def test_it_gives_json_list_entries_their_line_numbers(tmp_path: Path) -> None:
    content = f'[\n  "{T1}",\n  {{"token": "{T2}",\n   "tier": "gold"}},\n  ""\n]\n'
    summary = run(tmp_path, content)
    assert (
        summary
        == "imported 1, skipped 0 duplicates, 2 invalid (line 3: unknown tier 'gold'; line 5: empty token)"
    )


def test_it_never_prints_a_token(tmp_path: Path) -> None:
    content = f"{T1}\n{T1}\n{T2} {T3}\n" + json.dumps({"token": T3, "tier": "platinum"})
    summary = run(tmp_path, content)
    for token in (T1, T2, T3):
        assert token not in summary
        assert token[:20] not in summary


def test_it_writes_nothing_on_a_dry_run(tmp_path: Path) -> None:
    Account.objects.create(token=T1)
    summary = run(tmp_path, f"{T1}\n{T2}\n{T3}\nsso=\n", "--dry-run")
    assert summary == (
        "dry run: would import 2, skip 1 duplicate, 1 invalid (line 4: empty token); nothing written"
    )
    assert set(tokens()) == {T1}


def test_it_refuses_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_tokens", str(tmp_path / "missing.txt"), stdout=io.StringIO())
    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_tokens", str(directory), stdout=io.StringIO())


def test_it_refuses_a_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "tokens.bin"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(CommandError, match="not UTF-8"):
        call_command("import_tokens", str(path), stdout=io.StringIO())


def test_it_refuses_a_malformed_json_list_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="line 3"):
        run(tmp_path, f'[\n  "{T1}",\n  "{T2}" "{T3}"\n]')
    assert Account.objects.count() == 0


def test_it_refuses_a_pretty_printed_json_object(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="JSON list"):
        run(tmp_path, json.dumps({"token": T1}, indent=2))


def test_it_refuses_an_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(CommandError):
        run(tmp_path, T1, "--type", "gold")


def test_it_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{T1}\nsso={T2}; sso-rw={T2}\n"))
    out = io.StringIO()
    call_command("import_tokens", "-", "--type", "heavy", stdout=out)
    assert out.getvalue().strip() == "imported 2, skipped 0 duplicates, 0 invalid"
    assert tokens() == {T1: ("heavy", ""), T2: ("heavy", "")}


def test_it_keeps_base64_padding() -> None:
    assert normalize_token("c2VjcmV0dG9rZW4=") == "c2VjcmV0dG9rZW4="
    assert normalize_token("sso=c2VjcmV0dG9rZW4=; sso-rw=x") == "c2VjcmV0dG9rZW4="
    assert normalize_token(' sso="quoted-value" ') == "quoted-value"
    with pytest.raises(InvalidToken):
        normalize_token("sso=;")


def test_it_parses_without_touching_the_database() -> None:
    parsed = parse_tokens(f"{T1}\n{T1}\nsso=\n", default_tier="super")
    assert [(e.line, e.token, e.tier) for e in parsed.entries] == [(1, T1, "super")]
    assert parsed.duplicates == 1
    assert [str(item) for item in parsed.invalid] == ["line 3: empty token"]
