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


def test_it_fails_when_nothing_was_imported_and_lines_were_invalid(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("sso=\n")
    out = io.StringIO()
    with pytest.raises(CommandError, match="nothing imported: 1 invalid"):
        call_command("import_tokens", str(path), stdout=out)
    assert out.getvalue().strip() == "imported 0, skipped 0 duplicates, 1 invalid (line 1: empty token)"
    with pytest.raises(CommandError, match="nothing imported"):
        call_command("import_tokens", str(path), "--dry-run", stdout=io.StringIO())


def test_it_fails_when_only_duplicates_and_invalid_lines_remain(tmp_path: Path) -> None:
    Account.objects.create(token=T1)
    with pytest.raises(CommandError, match="nothing imported"):
        run(tmp_path, f"{T1}\nsso=\n")


def test_it_succeeds_when_everything_was_a_duplicate_or_something_was_imported(tmp_path: Path) -> None:
    Account.objects.create(token=T1)
    assert run(tmp_path, f"{T1}\n{T1}\n") == "imported 0, skipped 2 duplicates, 0 invalid"
    assert run(tmp_path, f"{T2}\nsso=\n") == "imported 1, skipped 0 duplicates, 1 invalid (line 2: empty token)"


def test_strict_writes_nothing_and_names_the_invalid_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(f"{T1}\nsso=\n{T2}\n" + json.dumps({"token": T3, "priority": "high"}) + "\n")
    out = io.StringIO()
    with pytest.raises(CommandError, match=r"--strict: 2 invalid, nothing imported \(line 2: .*; line 4: ") as info:
        call_command("import_tokens", str(path), "--strict", stdout=out)
    assert "priority must be an integer" in str(info.value)
    assert Account.objects.count() == 0
    assert out.getvalue() == ""
    assert run(tmp_path, f"{T1}\n{T2}\n", "--strict") == "imported 2, skipped 0 duplicates, 0 invalid"


def test_it_imports_priority_max_concurrent_and_proxy(tmp_path: Path) -> None:
    from pools.models import Proxy, ProxySource

    existing = Proxy.objects.create(url="http://127.0.0.2:9", source=ProxySource.POOL_URL)
    content = "\n".join(
        [
            json.dumps({"token": T1, "priority": 5, "max_concurrent": 2, "proxy": "socks5://u:pw@127.0.0.3:9"}),
            json.dumps({"token": T2, "priority": -1, "max_concurrent": None, "proxy": "http://127.0.0.2:9/"}),
            json.dumps({"token": T3, "proxy": "socks5h://u:pw@127.0.0.3:9"}),
        ]
    )
    assert run(tmp_path, content, name="t.jsonl") == "imported 3, skipped 0 duplicates, 0 invalid"
    accounts = {a.token: a for a in Account.objects.select_related("proxy")}
    assert (accounts[T1].priority, accounts[T1].max_concurrent) == (5, 2)
    assert (accounts[T2].priority, accounts[T2].max_concurrent) == (-1, None)
    assert (accounts[T3].priority, accounts[T3].max_concurrent) == (0, None)
    assert accounts[T2].proxy == existing
    created = Proxy.objects.get(url="socks5h://u:pw@127.0.0.3:9")
    assert created.source == ProxySource.MANUAL
    assert accounts[T1].proxy == created and accounts[T3].proxy == created
    assert Proxy.objects.count() == 2


def test_the_priority_and_max_concurrent_options_fill_in_unset_entries(tmp_path: Path) -> None:
    content = "\n".join(
        [T1, json.dumps({"token": T2, "priority": 1, "max_concurrent": None}), json.dumps({"token": T3})]
    )
    run(tmp_path, content, "--priority", "7", "--max-concurrent", "3")
    got = {a.token: (a.priority, a.max_concurrent) for a in Account.objects.all()}
    assert got == {T1: (7, 3), T2: (1, None), T3: (7, 3)}


def test_it_refuses_bad_priority_and_max_concurrent_options(tmp_path: Path) -> None:
    for option in (["--priority", "high"], ["--max-concurrent", "0"], ["--max-concurrent", "x"]):
        with pytest.raises(CommandError):
            run(tmp_path, T1, *option)
    assert Account.objects.count() == 0


def test_it_reports_invalid_fields_with_their_line_numbers(tmp_path: Path) -> None:
    content = "\n".join(
        [
            T1,
            json.dumps({"token": T2, "priority": 1.5}),
            json.dumps({"token": T2, "priority": True}),
            json.dumps({"token": T2, "max_concurrent": 0}),
            json.dumps({"token": T2, "max_concurrent": "4"}),
            json.dumps({"token": T2, "proxy": "ftp://u:hunter2@127.0.0.2:9"}),
            json.dumps({"token": T2, "proxy": "u:hunter2@127.0.0.2:9"}),
            json.dumps({"token": T2, "proxy": 8080}),
        ]
    )
    summary = run(tmp_path, content)
    assert summary.startswith("imported 1, skipped 0 duplicates, 7 invalid (line 2: priority must be an integer; ")
    assert "line 3: priority must be an integer" in summary
    assert "line 4: max_concurrent must be a whole number of at least 1, or null" in summary
    assert "line 5: max_concurrent must be" in summary
    assert "line 6: unsupported proxy scheme ftp://" in summary
    assert "line 7: proxy URL 'u:****@127.0.0.2:9' has no scheme" in summary
    assert "line 8: proxy must be a URL string" in summary
    assert "hunter2" not in summary
    assert T2 not in summary
    from pools.models import Proxy

    assert Proxy.objects.count() == 0


def test_a_dry_run_creates_no_proxy(tmp_path: Path) -> None:
    from pools.models import Proxy

    content = json.dumps({"token": T1, "proxy": "http://127.0.0.2:9"})
    assert run(tmp_path, content, "--dry-run").startswith("dry run: would import 1,")
    assert Proxy.objects.count() == 0 and Account.objects.count() == 0


def test_the_parser_takes_the_new_fields_without_the_database() -> None:
    parsed = parse_tokens(
        json.dumps({"token": T1, "proxy": "socks5://127.0.0.2:9", "priority": 2}) + f"\n{T2}\n",
        default_priority=4, default_max_concurrent=1,
    )
    assert [(e.priority, e.max_concurrent, e.proxy_url) for e in parsed.entries] == [
        (2, 1, "socks5h://127.0.0.2:9"), (4, 1, ""),
    ]
