"""The operator UI for accounts.

The admin never renders a whole token: lists and titles use the masked form,
the change form shows it read-only and takes a replacement in a separate,
never pre-filled field, and token inputs are password fields.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.text import Truncator

from pools.importing import InvalidToken, normalize_token
from pools.models import Account, AccountQuerySet, Status

TOKEN_HELP = "The `sso` cookie value; `sso=…` or a whole Cookie header also works."


def _accounts(n: int) -> str:
    return f"{n} account{'s' if n != 1 else ''}"


def _clean_token(value: str) -> str:
    try:
        return normalize_token(value)
    except InvalidToken as exc:
        raise forms.ValidationError(f"Not a usable token: {exc}.") from exc


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


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("usable", "Usable now"), *Status.choices]

    def queryset(self, request: HttpRequest, queryset: AccountQuerySet) -> QuerySet[Account]:
        if self.value() == "usable":
            # Cooling accounts whose window ended count: the next lease flips them back.
            return queryset.usable(timezone.now())
        if self.value() in Status.values:
            return queryset.filter(status=self.value())
        return queryset


class FailuresFilter(admin.SimpleListFilter):
    title = "failures"
    parameter_name = "failing"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Has failures"), ("no", "No failures")]

    def queryset(self, request: HttpRequest, queryset: AccountQuerySet) -> QuerySet[Account]:
        if self.value() == "yes":
            return queryset.filter(failure_count__gt=0)
        if self.value() == "no":
            return queryset.filter(failure_count=0)
        return queryset


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountChangeForm
    add_form = AccountAddForm
    list_display = [
        "masked",
        "tier",
        "status_shown",
        "failure_count",
        "last_error_short",
        "last_used_at",
        "use_count",
        "note",
        "created_at",
    ]
    list_filter = ["tier", StatusFilter, FailuresFilter]
    search_fields = ["note", "=token"]
    search_help_text = "Search notes, or paste a whole token to find its account."
    list_per_page = 100
    actions = ["enable_accounts", "disable_accounts", "reset_failures"]
    usage_fields = ["failure_count", "last_error", "last_used_at", "use_count", "created_at"]

    def get_form(self, request: HttpRequest, obj: Account | None = None, **kwargs: object) -> type:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Account | None = None) -> list:
        if obj is None:
            return [(None, {"fields": ["token", "tier", "note"]})]
        return [
            (None, {"fields": ["masked", "replace_token", "tier", "status", "cooldown_until", "note"]}),
            ("Usage", {"fields": self.usage_fields}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Account | None = None) -> list[str]:
        return [] if obj is None else ["masked", *self.usage_fields]

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
        until = date_format(timezone.localtime(obj.cooldown_until), "DATETIME_FORMAT")
        return format_html("{}<br><small>until {}</small>", obj.get_status_display(), until)

    @admin.display(description="Last error", ordering="last_error")
    def last_error_short(self, obj: Account) -> str:
        if not obj.last_error:
            return ""
        return format_html('<span title="{}">{}</span>', obj.last_error, Truncator(obj.last_error).chars(60))

    @admin.action(description="Enable selected accounts", permissions=["change"])
    def enable_accounts(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        self.message_user(request, f"Enabled {_accounts(queryset.enable())}.", messages.SUCCESS)

    @admin.action(description="Disable selected accounts", permissions=["change"])
    def disable_accounts(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        self.message_user(request, f"Disabled {_accounts(queryset.disable())}.", messages.SUCCESS)

    @admin.action(description="Reset failures of selected accounts", permissions=["change"])
    def reset_failures(self, request: HttpRequest, queryset: AccountQuerySet) -> None:
        n = queryset.reset_failures()
        self.message_user(request, f"Reset failures of {_accounts(n)}.", messages.SUCCESS)
