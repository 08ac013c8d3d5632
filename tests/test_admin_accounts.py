"""The account admin: what operators see (never a whole token) and what its actions do."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from pools.models import Account, Status
from tests.browser import admin_page, needs_chromium

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiYWxpY2UifQ.Zm9vYmFyYmF6cXV4c2VjcmV0"
OTHER = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiYm9iIn0.c2Vjb25kc2VjcmV0dG9rZW5i"
NEW = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiY2hhcmxpZSJ9.bmV3c2VjcmV0dG9rZW5j"
CHANGELIST = "/admin/pools/account/"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_superuser("alice", "alice@example.org", "alice-password")


@pytest.fixture
def client_alice(alice) -> Client:
    client = Client()
    assert client.login(username="alice", password="alice-password")
    return client


@pytest.fixture
def accounts(db) -> tuple[Account, Account]:
    a = Account.objects.create(
        token=TOKEN, tier="super", note="team a", failure_count=2, last_error="x" * 300
    )
    b = Account.objects.create(
        token=OTHER,
        status=Status.COOLING,
        cooldown_until=timezone.now() + timedelta(minutes=5),
        last_error="rate limited by Grok (429)",
    )
    return a, b


def html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def assert_no_secrets(page: str, *secrets: str) -> None:
    for secret in secrets or (TOKEN, OTHER):
        assert secret not in page
        assert secret[:30] not in page


def test_it_lists_accounts_with_masked_tokens(client_alice: Client, accounts) -> None:
    a, b = accounts
    page = html(client_alice.get(CHANGELIST))
    assert a.masked_token in page
    assert b.masked_token in page
    assert "Cooling down" in page and "until" in page
    assert "team a" in page
    assert f">{'x' * 59}…</span>" in page  # truncated in the list, whole on hover
    assert_no_secrets(page)


def test_it_shows_the_change_form_without_the_token(client_alice: Client, accounts) -> None:
    a, _ = accounts
    page = html(client_alice.get(f"{CHANGELIST}{a.pk}/change/"))
    assert a.masked_token in page
    assert 'name="replace_token"' in page
    assert 'name="token"' not in page
    assert_no_secrets(page)
    for view in ("history", "delete"):
        assert_no_secrets(html(client_alice.get(f"{CHANGELIST}{a.pk}/{view}/")))


def test_it_renders_the_filters(client_alice: Client, accounts) -> None:
    _, b = accounts
    for query in ("status=usable", "status=cooling", "failing=yes", "failing=no", "tier=super"):
        assert_no_secrets(html(client_alice.get(f"{CHANGELIST}?{query}")))
    page = html(client_alice.get(f"{CHANGELIST}?status=cooling"))
    assert b.masked_token in page
    assert accounts[0].masked_token not in page


def test_it_finds_an_account_by_its_whole_token(client_alice: Client, accounts) -> None:
    a, b = accounts
    page = html(client_alice.get(CHANGELIST, {"q": OTHER}))
    assert b.masked_token in page
    assert a.masked_token not in page
    assert "1 result" in page


def test_it_enables_accounts(client_alice: Client, accounts) -> None:
    a, b = accounts
    Account.objects.filter(pk=a.pk).update(status=Status.DISABLED)
    ids = [a.pk, b.pk]
    response = client_alice.post(
        CHANGELIST, {"action": "enable_accounts", "_selected_action": ids}, follow=True
    )
    assert "Enabled 2 accounts." in html(response)
    assert list(Account.objects.values_list("status", "cooldown_until")) == [(Status.ACTIVE, None)] * 2

    response = client_alice.post(
        CHANGELIST, {"action": "enable_accounts", "_selected_action": ids}, follow=True
    )
    assert "Enabled 0 accounts." in html(response)


def test_it_disables_accounts(client_alice: Client, accounts) -> None:
    a, _ = accounts
    response = client_alice.post(
        CHANGELIST, {"action": "disable_accounts", "_selected_action": [a.pk]}, follow=True
    )
    page = html(response)
    assert "Disabled 1 account." in page
    assert_no_secrets(page)
    assert Account.objects.get(pk=a.pk).status == Status.DISABLED


def test_it_resets_failures(client_alice: Client, accounts) -> None:
    a, b = accounts
    response = client_alice.post(
        CHANGELIST, {"action": "reset_failures", "_selected_action": [a.pk, b.pk]}, follow=True
    )
    assert "Reset failures of 2 accounts." in html(response)
    assert list(Account.objects.values_list("failure_count", "last_error")) == [(0, "")] * 2


def change_data(account: Account, **overrides: str) -> dict[str, str]:
    data = {
        "tier": account.tier,
        "status": account.status,
        "cooldown_until_0": "",
        "cooldown_until_1": "",
        "note": account.note,
        "replace_token": "",
    }
    return {**data, **overrides}


def test_it_keeps_the_token_when_replace_is_left_empty(client_alice: Client, accounts) -> None:
    a, _ = accounts
    response = client_alice.post(f"{CHANGELIST}{a.pk}/change/", change_data(a, note="renamed"), follow=True)
    assert_no_secrets(html(response))
    a.refresh_from_db()
    assert (a.token, a.note) == (TOKEN, "renamed")


def test_it_replaces_the_token(client_alice: Client, accounts) -> None:
    a, _ = accounts
    data = change_data(a, status=Status.ACTIVE, replace_token=f"_ga=1; sso={NEW}; sso-rw={NEW}")
    response = client_alice.post(f"{CHANGELIST}{a.pk}/change/", data, follow=True)
    page = html(response)
    assert "was changed successfully" in page
    assert_no_secrets(page, TOKEN, OTHER, NEW)
    a.refresh_from_db()
    assert a.token == NEW


def test_it_refuses_a_replacement_another_account_has(client_alice: Client, accounts) -> None:
    a, _ = accounts
    page = html(client_alice.post(f"{CHANGELIST}{a.pk}/change/", change_data(a, replace_token=OTHER)))
    assert "Another account already has this token." in page
    assert_no_secrets(page)
    assert Account.objects.get(pk=a.pk).token == TOKEN


def test_it_adds_an_account(client_alice: Client, db) -> None:
    assert 'name="token"' in html(client_alice.get(f"{CHANGELIST}add/"))
    data = {"token": f"sso={NEW}", "tier": "heavy", "note": "added by hand"}
    page = html(client_alice.post(f"{CHANGELIST}add/", data, follow=True))
    assert "was added successfully" in page
    assert_no_secrets(page, NEW)
    account = Account.objects.get()
    assert (account.token, account.tier, account.note) == (NEW, "heavy", "added by hand")


def test_it_does_not_echo_a_refused_token(client_alice: Client, accounts) -> None:
    for token, error in ((TOKEN, "already exists"), (f"{NEW} {NEW}", "Not a usable token")):
        page = html(client_alice.post(f"{CHANGELIST}add/", {"token": token, "tier": "basic", "note": ""}))
        assert error in page
        assert_no_secrets(page, TOKEN, NEW)
    assert Account.objects.count() == 2


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_it_shows_masked_tokens_in_a_real_browser(live_server, tmp_path: Path, django_user_model) -> None:
    # Sync on purpose: Playwright's sync API refuses to run inside an asyncio loop.
    django_user_model.objects.create_superuser("alice", "alice@example.org", "alice-password")
    account = Account.objects.create(token=TOKEN, tier="super", note="browser check")

    with admin_page(live_server.url, CHANGELIST, "alice", "alice-password") as page:
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        assert rows.first.get_by_text(account.masked_token).is_visible()
        assert rows.first.get_by_text("browser check").is_visible()
        assert_no_secrets(page.content())

        shot = tmp_path / "accounts.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 1000


# --- quota, filters ----------------------------------------------------------------------


def quota(account: Account, mode: str, remaining: int, total: int, *, resets_in: float, cooling: bool = False):
    from pools.models import Quota

    now = timezone.now()
    resets = now + timedelta(seconds=resets_in)
    return Quota.objects.create(
        account=account, mode=mode, remaining=remaining, total=total, window_seconds=7200,
        resets_at=resets, cooldown_until=resets if cooling else None, synced_at=now,
    )


def test_it_shows_quota_per_mode_and_the_next_reset(client_alice: Client, accounts) -> None:
    from django.utils.formats import date_format

    a, _ = accounts
    quota(a, "expert", 0, 50, resets_in=3600, cooling=True)
    quota(a, "fast", 130, 140, resets_in=7200)
    page = html(client_alice.get(CHANGELIST))
    assert "fast 130/140" in page
    assert "expert 0/50 cooling" in page
    assert page.index("fast 130/140") < page.index("expert 0/50")  # mode order, not alphabetical
    assert "&lt;" not in page  # markup is markup, not escaped text
    first_reset = a.quotas.get(mode="expert").resets_at
    assert date_format(timezone.localtime(first_reset), "DATETIME_FORMAT") in page
    assert "not synced" in page  # b
    assert_no_secrets(page)
    change = html(client_alice.get(f"{CHANGELIST}{a.pk}/change/"))
    assert "fast 130/140" in change and "Next reset" in change


def test_the_list_costs_the_same_queries_for_any_number_of_rows(client_alice: Client, accounts) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            html(client_alice.get(CHANGELIST))
        return len(queries)

    for account in accounts:
        quota(account, "fast", 1, 140, resets_in=60)
    few = count()
    for i in range(20):
        extra = Account.objects.create(token=f"eyJmany{i:03d}secretsecretsecret", tier="super")
        for mode in ("fast", "auto", "expert"):
            quota(extra, mode, 5, 50, resets_in=600)
    assert count() == few


def test_it_filters_by_quota_cooling_and_proxy(client_alice: Client, accounts) -> None:
    from pools.models import Proxy, ProxyHealth

    a, b = accounts
    c = Account.objects.create(token="eyJthirdaccountsecretsecret", tier="super")
    quota(a, "fast", 10, 140, resets_in=600)
    quota(a, "expert", 0, 50, resets_in=600, cooling=True)
    quota(c, "fast", 0, 140, resets_in=-5, cooling=True)  # its window ended: the probe's turn
    failed = Proxy.objects.create(url="http://user:pw@127.0.0.2:9", health=ProxyHealth.FAILED)
    Account.objects.filter(pk=c.pk).update(proxy=failed)

    def shown(query: str) -> set[int]:
        page = html(client_alice.get(f"{CHANGELIST}?{query}"))
        assert_no_secrets(page)
        return {x.pk for x in (a, b, c) if x.masked_token in page}

    assert shown("quota=left") == {a.pk}
    assert shown("quota=empty") == {a.pk, c.pk}
    assert shown("quota=unknown") == {b.pk}
    assert shown("cooling=now") == {a.pk, b.pk}  # a: one mode; b: the whole account
    assert shown("cooling=over") == {c.pk}
    assert shown("cooling=no") == set()
    assert shown("proxy=none") == {a.pk, b.pk}
    assert shown("proxy=bound") == shown("proxy=failed") == {c.pk}
    assert "pw@" not in html(client_alice.get(f"{CHANGELIST}?proxy=bound"))  # the proxy password stays masked
