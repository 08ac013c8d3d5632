"""Operators at scale: import from the admin, bulk actions (in the background past 20 accounts), export, job runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from pools import background, bulk
from pools.importing import parse_tokens
from pools.jobs import run_job
from pools.models import Account, BulkTask, JobRun, Quota, Status
from tests.browser import admin_page, needs_chromium
from tests.test_admin_accounts import assert_no_secrets

pytestmark = pytest.mark.timeout(120)

CHANGELIST = "/admin/pools/account/"
IMPORT = "/admin/pools/account/import/"
T1 = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiZGF2ZSJ9.ZGF2ZXNlY3JldHRva2VuMTIz"
T2 = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiZXZlIn0.ZXZlc2VjcmV0dG9rZW40NTY3"
T3 = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiZnJhbmsifQ.ZnJhbmtzZWNyZXR0b2tlbjg5"
SECRETS = (T1, T2, T3)


@pytest.fixture(autouse=True)
def _no_stray_threads():
    yield
    assert background.wait_idle(60), "a background task is still running"


@pytest.fixture
def alice(transactional_db, django_user_model) -> Client:
    django_user_model.objects.create_superuser("alice", "alice@example.org", "alice-password")
    client = Client()
    assert client.login(username="alice", password="alice-password")
    return client


@pytest.fixture
def bob(transactional_db, django_user_model) -> Client:
    """Staff who may view and change accounts, but not add them or export their tokens."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("bob", "bob@example.org", "bob-password", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_account", "change_account"]))
    client = Client()
    assert client.login(username="bob", password="bob-password")
    return client


def html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def messages_of(page: str) -> list[str]:
    listed = re.search(r'<ul class="messagelist">(.*?)</ul>', page, re.S)
    items = re.findall(r"<li[^>]*>(.*?)</li>", listed.group(1), re.S) if listed else []
    return [re.sub(r"<[^>]+>", "", item).strip() for item in items]


def act(client: Client, action: str, accounts, **extra: str):
    data = {"action": action, "_selected_action": [a.pk for a in accounts], **extra}
    return client.post(CHANGELIST, data, follow=True)


def make(n: int, prefix: str = "bulk", **fields: object) -> list[Account]:
    return Account.objects.bulk_create(
        Account(token=f"{prefix}-{i:03d}-secretsecretsecret", **fields) for i in range(n)
    )


def finished(task_id: int) -> BulkTask:
    assert background.wait_idle(60)
    return BulkTask.objects.get(pk=task_id)


# --- import ------------------------------------------------------------------------------


def test_it_imports_an_uploaded_file(alice: Client) -> None:
    Account.objects.create(token=T3)
    content = f"# team b\n{T1}\nsso={T2}; sso-rw={T2}\n{T1}\nnot a token at all\n{T3}\n".encode()
    upload = SimpleUploadedFile("tokens.txt", content, content_type="text/plain")

    response = alice.post(IMPORT, {"file": upload, "tier": "super"}, follow=True)

    page = html(response)
    assert response.redirect_chain[-1][0] == CHANGELIST
    assert messages_of(page) == ["Imported 2, skipped 2 duplicates, 1 invalid (line 5: "
                                 "token has characters a cookie cannot hold)."]
    assert_no_secrets(page, *SECRETS)
    for token in (T1, T2):
        account = Account.objects.get(token=token)
        assert account.tier == "super"
        assert account.masked_token in page


def test_it_imports_pasted_tokens(alice: Client) -> None:
    text = json.dumps({"token": T1, "tier": "heavy", "note": "from paste"}) + f"\n\n{T2}\n"
    page = html(alice.post(IMPORT, {"text": text, "tier": "basic"}, follow=True))
    assert messages_of(page) == ["Imported 2, skipped 0 duplicates, 0 invalid."]
    assert_no_secrets(page, *SECRETS)
    assert list(Account.objects.order_by("id").values_list("token", "tier", "note")) == [
        (T1, "heavy", "from paste"), (T2, "basic", ""),
    ]


def test_a_dry_run_writes_nothing(alice: Client) -> None:
    page = html(alice.post(IMPORT, {"text": f"{T1}\n{T2}\n", "tier": "basic", "dry_run": "on"}, follow=True))
    assert messages_of(page) == ["Dry run: would import 2, skip 0 duplicates, 0 invalid; nothing written."]
    assert not Account.objects.exists()


def test_it_never_shows_pasted_text_again(alice: Client) -> None:
    # A JSON list that does not parse: the whole paste is refused and the form comes back empty.
    page = html(alice.post(IMPORT, {"text": f'["{T1}", "{T2}" "{T3}"]', "tier": "basic"}))
    assert "Nothing imported: not valid JSON" in page
    assert_no_secrets(page, *SECRETS)
    page = html(alice.post(IMPORT, {"text": T1, "file": SimpleUploadedFile("t.txt", T2.encode()), "tier": "basic"}))
    assert "Upload a file or paste tokens, not both." in page
    assert_no_secrets(page, *SECRETS)
    page = html(alice.post(IMPORT, {"file": SimpleUploadedFile("t.bin", b"\xff\xfe\x00bad"), "tier": "basic"}))
    assert "The file is not UTF-8 text." in page
    assert not Account.objects.exists()


def test_the_import_page_needs_the_add_permission(alice: Client, bob: Client) -> None:
    assert 'href="/admin/pools/account/import/"' in html(alice.get(CHANGELIST))
    assert "Import tokens" not in html(bob.get(CHANGELIST))
    assert bob.get(IMPORT).status_code == 403
    assert bob.post(IMPORT, {"text": T1, "tier": "basic"}).status_code == 403
    assert not Account.objects.exists()


# --- bulk actions, a few accounts: at once -----------------------------------------------


def test_it_refreshes_quota_of_a_few_accounts(alice: Client, gateway, fake_grok) -> None:
    good = Account.objects.create(token="admin-good-1", tier="super")
    bad = Account.objects.create(token="expired-admin-1")
    fake_grok.set_quota("admin-good-1", "expert", 12, 50, 3600)

    page = html(act(alice, "refresh_quota", [good, bad]))

    assert messages_of(page) == ["Refreshed quota of 1 account; 1 failed (1 rejected (401))."]
    assert {q.mode: q.remaining for q in Quota.objects.filter(account=good)} == {"fast": 140, "auto": 140, "expert": 12}
    assert Account.objects.get(pk=bad.pk).status == Status.EXPIRED
    assert "expert 12/50" in page  # the changelist the action returns to shows the new numbers
    assert not BulkTask.objects.exists()


def test_it_tests_a_few_accounts(alice: Client, gateway, fake_grok) -> None:
    accounts = [Account.objects.create(token=t) for t in ("admin-good-2", "banned-admin-2", "flaky-admin-2")]
    page = html(act(alice, "test_accounts", accounts))
    assert messages_of(page) == ["Tested 3 accounts: 1 answered, 2 failed (1 banned, 1 errors)."]
    # A test is one real rate-limits request per account, for the fast mode.
    assert [r.json for r in fake_grok.requests("admin-good-2")] == [{"modelName": "fast"}]
    assert Account.objects.get(token="banned-admin-2").status == Status.DISABLED


def test_it_deletes_after_asking(alice: Client) -> None:
    accounts = make(3)
    page = html(act(alice, "delete_accounts", accounts[:2]))
    assert "Delete these accounts?" in page and "2 accounts selected" in page
    assert accounts[0].masked_token in page
    assert_no_secrets(page, *(a.token for a in accounts))
    assert Account.objects.count() == 3

    page = html(act(alice, "delete_accounts", accounts[:2], post="yes"))
    assert messages_of(page) == ["Deleted 2 accounts."]
    assert list(Account.objects.values_list("pk", flat=True)) == [accounts[2].pk]


# --- bulk actions, many accounts: a background task ----------------------------------------


def test_a_large_selection_runs_as_a_background_task(alice: Client, gateway, fake_grok) -> None:
    accounts = make(23, "many") + make(2, "expired-many")

    page = html(act(alice, "refresh_quota", accounts))

    task = BulkTask.objects.get()
    (message,) = messages_of(page)
    assert message == f"Refresh quota of 25 accounts runs in the background: task #{task.pk} shows its progress."
    assert f'href="/admin/pools/bulktask/{task.pk}/change/"' in page
    task = finished(task.pk)
    assert (task.status, task.kind, task.total, task.done, task.failed) == ("done", "refresh_quota", 25, 25, 2)
    assert task.message == "Refreshed quota of 23 accounts; 2 failed (2 rejected (401))."
    assert task.created_by == "alice" and task.finished_at is not None
    assert Quota.objects.filter(mode="fast", remaining=140).count() == 23

    detail = html(alice.get(f"/admin/pools/bulktask/{task.pk}/change/"))
    assert '<progress value="25" max="25"' in detail and "25 / 25 done" in detail and "2 failed" in detail
    assert 'http-equiv="refresh"' not in detail  # finished: no more reloading
    listing = html(alice.get("/admin/pools/bulktask/"))
    assert f"#{task.pk}" in listing and "Refresh quota" in listing
    for page in (detail, listing):
        assert_no_secrets(page, *(a.token for a in accounts))


def test_a_running_task_page_reloads_itself(alice: Client) -> None:
    task = BulkTask.objects.create(kind="enable", total=40, done=20, status="running", account_ids=[1, 2])
    page = html(alice.get(f"/admin/pools/bulktask/{task.pk}/change/"))
    assert '<meta http-equiv="refresh" content="2">' in page
    assert "20 / 40 done" in page


def test_all_matching_accounts_can_be_acted_on_in_the_background(alice: Client) -> None:
    make(30, "off", status=Status.DISABLED, note="batch")
    make(2, "keep", status=Status.DISABLED)
    first_page = Account.objects.filter(note="batch").order_by("id")[:1]
    data = {"action": "enable_accounts", "_selected_action": [first_page[0].pk], "select_across": "1", "index": "0"}

    page = html(alice.post(f"{CHANGELIST}?q=batch", data, follow=True))

    task = BulkTask.objects.get()
    assert "Enable of 30 accounts runs in the background" in page
    task = finished(task.pk)
    assert (task.status, task.done, task.message) == ("done", 30, "Enabled 30 accounts.")
    assert Account.objects.filter(status=Status.ACTIVE).count() == 30
    assert Account.objects.filter(status=Status.DISABLED).count() == 2


def test_a_large_delete_runs_in_the_background(alice: Client) -> None:
    accounts = make(21)
    page = html(act(alice, "delete_accounts", accounts, post="yes"))
    task = BulkTask.objects.get()
    assert f"task #{task.pk}" in page
    assert finished(task.pk).message == "Deleted 21 accounts."
    assert not Account.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_runs_a_queued_task_once() -> None:
    accounts = make(3, status=Status.DISABLED)
    task = BulkTask.objects.create(kind="enable", total=3, account_ids=[a.pk for a in accounts])

    async def twice() -> list[bool]:
        return [await bulk.run_task(task.pk), await bulk.run_task(task.pk)]

    assert async_to_sync(twice)() == [True, False]  # the second claim loses
    task.refresh_from_db()
    assert (task.status, task.done, task.message) == ("done", 3, "Enabled 3 accounts.")
    assert async_to_sync(bulk.run_queued)() == 0


# --- export ------------------------------------------------------------------------------


def test_export_warns_first_and_then_returns_a_file(alice: Client) -> None:
    a = Account.objects.create(token=T1, tier="super", note="team a")
    b = Account.objects.create(token=T2)

    page = html(act(alice, "export_tokens", [a, b]))
    assert "The file contains secrets" in page
    assert "I understand, download the file" in page
    assert a.masked_token in page
    assert_no_secrets(page, *SECRETS)

    response = act(alice, "export_tokens", [a, b], post="yes")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="grok-tokens-')
    assert "no-store" in response["Cache-Control"]
    text = response.content.decode()
    assert text.startswith("# grok2api token export") and "CONTAINS SECRETS" in text.splitlines()[0]
    parsed = parse_tokens(text)  # the importer reads it back
    assert [(e.token, e.tier, e.note) for e in parsed.entries] == [(T1, "super", "team a"), (T2, "basic", "")]
    assert not parsed.invalid


def test_only_superusers_export(bob: Client) -> None:
    a = Account.objects.create(token=T1)
    assert "export_tokens" not in html(bob.get(CHANGELIST))
    response = act(bob, "export_tokens", [a], post="yes")
    assert "Content-Disposition" not in response
    assert T1 not in response.content.decode()


# --- job runs ----------------------------------------------------------------------------


def test_the_job_list_shows_each_jobs_last_run(alice: Client, gateway, runtime) -> None:
    runtime(quota_refresh_interval=1800, recovery_probe_interval=60)
    async_to_sync(run_job)("recovery_probe")
    JobRun.objects.create(name="retired_job", outcome="failed", message="ValueError: gone", runs=3)

    page = html(alice.get("/admin/pools/jobrun/"))

    assert "recovery_probe" in page and "nothing to probe" in page and "1 min" in page
    assert "retired_job" in page and "not registered" in page and "failed" in page
    run = JobRun.objects.get(name="recovery_probe")
    assert_no_secrets(html(alice.get(f"/admin/pools/jobrun/{run.pk}/change/")), *SECRETS)

    page = html(alice.post("/admin/pools/jobrun/", {"action": "run_now", "_selected_action": [run.pk]}, follow=True))
    assert "Started recovery_probe" in page
    assert background.wait_idle(60)
    assert JobRun.objects.get(name="recovery_probe").runs == 2


# --- nothing secret on any page ----------------------------------------------------------


def test_no_admin_page_shows_a_whole_token(alice: Client, gateway, fake_grok) -> None:
    accounts = [Account.objects.create(token=t, tier="super") for t in SECRETS]
    html(act(alice, "refresh_quota", accounts))
    task = BulkTask.objects.create(kind="test", total=3, account_ids=[a.pk for a in accounts], status="done")
    async_to_sync(run_job)("quota_refresh")
    pages = [
        CHANGELIST, f"{CHANGELIST}?quota=left", f"{CHANGELIST}?cooling=now", f"{CHANGELIST}?proxy=none",
        f"{CHANGELIST}{accounts[0].pk}/change/", IMPORT, "/admin/pools/bulktask/",
        f"/admin/pools/bulktask/{task.pk}/change/", "/admin/pools/jobrun/", "/admin/pools/quota/",
    ]
    for url in pages:
        response = alice.get(url)
        if response.status_code == 404:
            continue  # not every model has an admin
        assert_no_secrets(html(response), *SECRETS)
    for action in ("delete_accounts", "export_tokens"):
        assert_no_secrets(html(act(alice, action, accounts)), *SECRETS)


# --- a real browser ----------------------------------------------------------------------


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_it_imports_pasted_tokens_in_a_real_browser(live_server, tmp_path: Path, django_user_model) -> None:
    django_user_model.objects.create_superuser("alice", "alice@example.org", "alice-password")
    # Playwright's sync API runs an event loop in this thread: no ORM calls inside the block.
    masked = [Account(token=token).masked_token for token in (T1, T2)]
    with admin_page(live_server.url, CHANGELIST, "alice", "alice-password") as page:
        page.click("text=Import tokens")
        page.wait_for_url(f"{live_server.url}{IMPORT}")
        page.fill("#id_text", f"{T1}\nsso={T2}\n# a comment\n{T1}\n")
        page.select_option("#id_tier", "super")
        page.click("input[name=_import]")
        page.wait_for_url(f"{live_server.url}{CHANGELIST}")

        assert page.locator("ul.messagelist li").inner_text() == (
            "Imported 2, skipped 1 duplicate, 0 invalid."
        )
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 2
        for shown in masked:
            assert rows.get_by_text(shown).is_visible()
        assert_no_secrets(page.content(), *SECRETS)
        shot = tmp_path / "imported.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
    assert set(Account.objects.values_list("tier", flat=True)) == {"super"}
