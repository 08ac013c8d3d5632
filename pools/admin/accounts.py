"""The operator UI for accounts.

The admin never renders a whole token: lists and titles use the masked form,
the change form shows it read-only and takes a replacement in a separate,
never pre-filled field, and token inputs are password fields (the import page's
paste box is never filled back either). The one way out for whole tokens is the
"Export tokens" action, which asks first and says the file holds secrets.

Bulk actions on more than `pools.bulk.SYNC_LIMIT` accounts run as a background
`BulkTask`; the message links to its progress page.
"""

from __future__ import annotations

import logging
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.timesince import timesince

from pools import bulk
from pools.admin.account_filters import CoolingFilter, FailuresFilter, ProxyFilter, QuotaFilter, StatusFilter
from pools.admin.account_import import export_response, import_view
from pools.importing import InvalidToken, normalize_token
from pools.models import Account, AccountQuerySet, Quota, Status
from pools.quotas import MODE_ORDER

logger = logging.getLogger(__name__)

TOKEN_HELP = "The `sso` cookie value; `sso=…` or a whole Cookie header also works."


def _accounts(n: int) -> str:
    return f"{n} account{'s' if n != 1 else ''}"


def _clean_token(value: str) -> str:
    try:
        return normalize_token(value)
    except InvalidToken as exc:
        raise forms.ValidationError(f"Not a usable token: {exc}.") from exc


def _when(moment) -> str:
    return date_format(timezone.localtime(moment), "DATETIME_FORMAT")


class SecretInput(forms.PasswordInput):
    """Never puts the value back into the page, even when the form is redisplayed with errors."""

    def __init__(self) -> None:
        super().__init__(render_value=False, attrs={"autocomplete": "off", "size": 80})


class AccountAddForm(forms.ModelForm):
    token = forms.CharField(widget=SecretInput(), help_text=TOKEN_HELP)

    class Meta:
        model = Account
        fields = ["token", "tier", "note"]

    def clean_token(self) -> str:
        return _clean_token(self.cleaned_data["token"])


class AccountChangeForm(forms.ModelForm):
    replace_token = forms.CharField(
        required=False,
        widget=SecretInput(),
        help_text=f"Leave empty to keep the current token. {TOKEN_HELP} "
        "If the account had expired, set its status back to Active too.",
    )

    class Meta:
        model = Account
        fields = ["tier", "status", "cooldown_until", "note"]

    def clean_replace_token(self) -> str:
        value = self.cleaned_data["replace_token"]
        if not value.strip():
            return ""
        token = _clean_token(value)
        if Account.objects.filter(token=token).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError("Another account already has this token.")
        return token

    def save(self, commit: bool = True) -> Account:
        if self.cleaned_data.get("replace_token"):
            self.instance.token = self.cleaned_data["replace_token"]
        return super().save(commit)


def _modes(obj: Account) -> list[Quota]:
    """The prefetched quota rows, in mode order (no query: `get_queryset` prefetches them)."""
    return sorted(obj.quotas.all(), key=lambda q: (MODE_ORDER.get(q.mode, 99), q.mode))


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountChangeForm
    add_form = AccountAddForm
    list_display = [
        "masked",
        "tier",
        "status_shown",
        "quota_shown",
        "next_reset",
        "failure_count",
        "last_error_short",
        "proxy",
        "last_used_at",
        "use_count",
        "note",
    ]
    list_filter = ["tier", StatusFilter, QuotaFilter, CoolingFilter, ProxyFilter, FailuresFilter]
    search_fields = ["note", "=token"]
    search_help_text = "Search notes, or paste a whole token to find its account."
    list_per_page = 100
    actions = [
        "refresh_quota",
        "test_accounts",
        "enable_accounts",
        "disable_accounts",
        "reset_failures",
        "delete_accounts",
        "export_tokens",
    ]
    usage_fields = ["failure_count", "last_error", "last_used_at", "use_count", "created_at"]
    quota_fields = ["quota_shown", "next_reset"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Account]:
        # One query for the page's proxies (join) and one for all its quota rows, however many rows.
        return super().get_queryset(request).select_related("proxy").prefetch_related(Prefetch("quotas"))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(lambda request: import_view(self, request))
        return [path("import/", view, name="pools_account_import"), *super().get_urls()]

    def get_form(self, request: HttpRequest, obj: Account | None = None, change: bool = False,
                 **kwargs: Any) -> type[forms.ModelForm]:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Account | None = None) -> list:
        if obj is None:
            return [(None, {"fields": ["token", "tier", "note"]})]
        return [
            (None, {"fields": ["masked", "replace_token", "tier", "status", "cooldown_until", "note"]}),
            ("Quota", {"fields": self.quota_fields}),
            ("Usage", {"fields": self.usage_fields}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Account | None = None) -> list[str]:
        return [] if obj is None else ["masked", *self.quota_fields, *self.usage_fields]

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        # Replaced by `delete_accounts`: a short confirmation that scales to thousands of rows.
        actions.pop("delete_selected", None)
        return actions

    def has_export_permission(self, request: HttpRequest) -> bool:
        """Whole tokens leave the gateway: superusers only."""
        return request.user.is_active and request.user.is_superuser

    # --- columns ------------------------------------------------------------------------

    @admin.display(description="Token", ordering="id")
    def masked(self, obj: Account) -> str:
        return format_html('<span style="white-space: nowrap">{}</span>', obj.masked_token)

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: Account) -> str:
        if obj.status != Status.COOLING or obj.cooldown_until is None:
            return obj.get_status_display()
        if obj.cooldown_until <= timezone.now():
            return format_html(
                "{} <small>(over; back in rotation at the next lease)</small>", obj.get_status_display()
            )
        return format_html("{}<br><small>until {}</small>", obj.get_status_display(), _when(obj.cooldown_until))

    @admin.display(description="Quota (remaining/total)")
    def quota_shown(self, obj: Account) -> str:
        rows = _modes(obj)
        if not rows:
            return format_html('<small title="{}">not synced</small>', "Refresh quota or wait for the next sync.")
        now = timezone.now()

        def cell(q: Quota) -> tuple[str, str, str, str]:
            count = "?" if q.remaining is None else f"{q.remaining}/{q.total or '?'}"
            synced = f"synced {timesince(q.synced_at, now)} ago" if q.synced_at else "never synced"
            if q.cooldown_until and q.cooldown_until > now:
                return ("color: var(--error-fg)", f"{synced}; cooling until {_when(q.cooldown_until)}", q.mode,
                        f"{count} cooling")
            return ("", synced, q.mode, count)

        return format_html_join(
            mark_safe("<br>"), '<span style="white-space: nowrap; {}" title="{}">{} {}</span>', (cell(q) for q in rows)
        )

    @admin.display(description="Next reset")
    def next_reset(self, obj: Account) -> str:
        now = timezone.now()
        upcoming = [q.resets_at for q in obj.quotas.all() if q.resets_at and q.resets_at > now]
        if not upcoming:
            return ""
        first = min(upcoming)
        return format_html('<span title="in {}">{}</span>', timesince(now, first), _when(first))

    @admin.display(description="Last error", ordering="last_error")
    def last_error_short(self, obj: Account) -> str:
        if not obj.last_error:
            return ""
        return format_html('<span title="{}">{}</span>', obj.last_error, Truncator(obj.last_error).chars(60))

    # --- actions ------------------------------------------------------------------------

    def _run(self, request: HttpRequest, queryset: QuerySet[Account], kind: str) -> None:
        """A few accounts now; more than `bulk.SYNC_LIMIT` as a background task the message links to."""
        ids = list(queryset.prefetch_related(None).order_by("pk").values_list("pk", flat=True))
        if len(ids) > bulk.SYNC_LIMIT:
            task = bulk.start_task(kind, ids, request.user.get_username())
            url = reverse("admin:pools_bulktask_change", args=[task.pk])
            self.message_user(
                request,
                format_html(
                    '{} of {} runs in the background: <a href="{}">task #{}</a> shows its progress.',
                    bulk.KINDS[kind], _accounts(len(ids)), url, task.pk,
                ),
                messages.INFO,
            )
            return
        tally = bulk.run_small(kind, ids)
        self.message_user(request, bulk.summary(kind, tally), messages.WARNING if tally.failed else messages.SUCCESS)

    @admin.action(description="Refresh quota of selected accounts (asks Grok)", permissions=["change"])
    def refresh_quota(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        self._run(request, queryset, "refresh_quota")

    @admin.action(description="Test selected accounts (a real rate-limits request)", permissions=["change"])
    def test_accounts(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        self._run(request, queryset, "test")

    @admin.action(description="Enable selected accounts", permissions=["change"])
    def enable_accounts(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        self._run(request, queryset, "enable")

    @admin.action(description="Disable selected accounts", permissions=["change"])
    def disable_accounts(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        self._run(request, queryset, "disable")

    @admin.action(description="Reset failures of selected accounts", permissions=["change"])
    def reset_failures(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        self._run(request, queryset, "reset_failures")

    @admin.action(description="Delete selected accounts", permissions=["delete"])
    def delete_accounts(self, request: HttpRequest, queryset: AccountQuerySet) -> TemplateResponse | None:
        if request.POST.get("post") != "yes":
            return self._confirm(
                request, queryset, action="delete_accounts", title="Delete accounts",
                question="Delete these accounts? Their quota rows go with them. This cannot be undone.",
                warning="", button="Yes, delete them",
            )
        self._run(request, queryset, "delete")
        return None

    @admin.action(description="Export tokens of selected accounts (contains secrets)", permissions=["export"])
    def export_tokens(self, request: HttpRequest, queryset: AccountQuerySet) -> HttpResponse | None:
        if request.POST.get("post") != "yes":
            return self._confirm(
                request, queryset, action="export_tokens", title="Export tokens",
                question="Download the whole tokens of these accounts as a file?",
                warning="The file contains secrets: each token signs in to a Grok account as its owner. "
                "Anyone who gets the file can use those accounts. Keep it out of chats, tickets and "
                "repositories, and delete it when you are done.",
                button="I understand, download the file",
            )
        return export_response(request, queryset.prefetch_related(None).select_related(None))

    def _confirm(self, request: HttpRequest, queryset: QuerySet[Account], *, action: str, title: str,
                 question: str, warning: str, button: str) -> TemplateResponse:
        count = queryset.count()
        plain = queryset.select_related(None).prefetch_related(None)
        sample = [a.masked_token for a in plain.only("token")[:10]]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "question": question,
            "warning": warning,
            "button": button,
            "action": action,
            "count": count,
            "accounts_label": _accounts(count),
            "sample": sample,
            "more": max(0, count - len(sample)),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/pools/account/action_confirmation.html", context)
