"""The proxy admin: health and bound accounts at a glance, secrets masked, "Test now", enable and disable."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pools.models import Account, Proxy

pytestmark = pytest.mark.timeout(60)
CHANGELIST = "/admin/pools/proxy/"
PASSWORD = "hunter2-proxy-secret"
CLEARANCE = "cf-clearance-9f8e7d6c5b4a39281706"


@pytest.fixture
def client_alice(django_user_model) -> Client:
    django_user_model.objects.create_superuser("alice", "alice@example.org", "alice-password")
    client = Client()
    assert client.login(username="alice", password="alice-password")
    return client


@pytest.fixture
def listed(db) -> tuple[Proxy, Proxy]:
    a = Proxy.objects.create(url=f"socks5h://bob:{PASSWORD}@127.0.0.2:9", cf_clearance=CLEARANCE, health="ok")
    b = Proxy.objects.create(url="http://127.0.0.3:9", health="failed", failure_count=4,
                             last_error="Cloudflare blocked the request (challenge page)")
    for i in range(3):
        Account.objects.create(token=f"token-{i}", proxy=a)
    return a, b


def html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def assert_no_secrets(page: str) -> None:
    assert PASSWORD not in page and CLEARANCE not in page and CLEARANCE[:20] not in page


def test_it_lists_proxies_with_health_bound_accounts_and_secrets_masked(client_alice, listed):
    with CaptureQueriesContext(connection) as queries:
        page = html(client_alice.get(CHANGELIST))
    assert "socks5h://bob:****@127.0.0.2:9" in page and "http://127.0.0.3:9" in page
    assert '<td class="field-bound">3</td>' in page and '<td class="field-bound">0</td>' in page
    assert "Healthy" in page and "Failed" in page and "Cloudflare blocked" in page
    assert "cf-cle…" in page  # the clearance, masked
    assert_no_secrets(page)
    per_row = [q["sql"] for q in queries.captured_queries if 'FROM "pools_account" WHERE' in q["sql"]]
    assert per_row == []  # bound accounts come from the annotated list query, not a query per row


def test_it_shows_the_change_form_and_history_without_secrets(client_alice, listed):
    a, _ = listed
    page = html(client_alice.get(f"{CHANGELIST}{a.pk}/change/"))
    assert 'name="replace_url"' in page and 'name="replace_cf_clearance"' in page and 'name="url"' not in page
    assert_no_secrets(page)
    assert_no_secrets(html(client_alice.get(f"{CHANGELIST}{a.pk}/history/")))


def test_it_renders_the_filters(client_alice, listed):
    for query in ("health=usable", "health=failed", "health=ok", "bound=yes", "bound=no", "enabled__exact=1"):
        assert_no_secrets(html(client_alice.get(f"{CHANGELIST}?{query}")))
    page = html(client_alice.get(f"{CHANGELIST}?bound=yes"))
    assert "127.0.0.2" in page and "127.0.0.3" not in page


def test_it_adds_a_socks5_proxy_as_socks5h_and_refuses_other_schemes(client_alice, db):
    data = {"url": "socks5://u:p@127.0.0.8:9", "enabled": "on", "cf_clearance": "", "user_agent": ""}
    assert "was added successfully" in html(client_alice.post(f"{CHANGELIST}add/", data, follow=True))
    assert Proxy.objects.get().url == "socks5h://u:p@127.0.0.8:9"
    page = html(client_alice.post(f"{CHANGELIST}add/", {**data, "url": "ftp://127.0.0.9:9"}))
    assert "unsupported proxy scheme ftp://" in page
    page = html(client_alice.post(f"{CHANGELIST}add/", {**data, "url": "socks5h://u:p@127.0.0.8:9"}))
    assert "already in the list" in page


def test_it_keeps_the_url_and_clearance_when_replacements_are_left_empty(client_alice, listed):
    a, _ = listed
    data = {"enabled": "on", "user_agent": "Mozilla/5.0 New", "replace_url": "", "replace_cf_clearance": ""}
    assert "was changed successfully" in html(client_alice.post(f"{CHANGELIST}{a.pk}/change/", data, follow=True))
    a.refresh_from_db()
    assert (a.url, a.cf_clearance, a.user_agent) == (f"socks5h://bob:{PASSWORD}@127.0.0.2:9", CLEARANCE,
                                                     "Mozilla/5.0 New")
    data.update(replace_url="socks5://127.0.0.10:9", replace_cf_clearance="new-clearance")
    client_alice.post(f"{CHANGELIST}{a.pk}/change/", data)
    a.refresh_from_db()
    assert (a.url, a.cf_clearance, a.health) == ("socks5h://127.0.0.10:9", "new-clearance", "unknown")


def test_it_tests_the_selected_proxies_now(client_alice, db, settings, fake_grok, farm):
    settings.GROK_BASE_URL = fake_grok.base_url
    works = Proxy.objects.create(url=farm.proxy("works").url, health="failed")
    walled = Proxy.objects.create(url=farm.proxy("walled", blocked=True).url, health="ok")
    Account.objects.create(token="good-1", proxy=walled)

    response = client_alice.post(
        CHANGELIST, {"action": "test_now", "_selected_action": [works.pk, walled.pk]}, follow=True
    )

    page = html(response)
    assert "Tested 2 proxies: 1 healthy, 1 failed." in page and "Cloudflare" in page
    assert dict(Proxy.objects.values_list("pk", "health")) == {works.pk: "ok", walled.pk: "failed"}
    assert Account.objects.get(token="good-1").proxy_id is None  # unbound from the failed one


def test_it_enables_and_disables_proxies_unbinding_their_accounts(client_alice, listed):
    a, b = listed
    page = html(client_alice.post(CHANGELIST, {"action": "disable_proxies", "_selected_action": [a.pk, b.pk]},
                                  follow=True))
    assert "Disabled 2 proxies." in page
    assert not Account.objects.filter(proxy__isnull=False).exists()
    page = html(client_alice.post(CHANGELIST, {"action": "enable_proxies", "_selected_action": [a.pk]},
                                  follow=True))
    assert "Enabled 1 proxy." in page
    assert dict(Proxy.objects.values_list("pk", "enabled")) == {a.pk: True, b.pk: False}
