"""Runtime settings in the admin: one row, edited in place, with its change history.

The list URL opens the row itself. Each field's help text names the environment
default it started from, so an operator sees what is in force and where it came
from. Secrets (proxy URLs with passwords, cf_clearance) are never rendered back:
leave the box empty to keep the value, type `-` to clear it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from pools.models import RuntimeSettings, mask_proxy_url, mask_token
from pools.settings import env_defaults, load_row

SECRETS = ("proxy_url", "proxy_pool_url", "cf_clearance")


def _masked(name: str, value: str) -> str:
    if not value:
        return "not set"
    return mask_token(value) if name == "cf_clearance" else mask_proxy_url(value)


class RuntimeSettingsForm(forms.ModelForm):
    class Meta:
        model = RuntimeSettings
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = env_defaults()
        for name, field in self.fields.items():
            if name in defaults and name not in SECRETS:
                field.help_text = format_html("{} <i>Environment default: {}</i>", field.help_text, defaults[name])
        for name in SECRETS:
            current = getattr(self.instance, name, "")
            self.fields[name] = forms.CharField(
                required=False, label=self.fields[name].label,
                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
                help_text=format_html("Now: <code>{}</code>. Leave empty to keep it; type <code>-</code> to clear it.",
                                      _masked(name, current)),
            )

    def clean(self) -> dict:
        super().clean()
        data = self.cleaned_data  # what ModelForm.clean returns, typed without its `None`
        for name in SECRETS:
            typed = (data.get(name) or "").strip()
            data[name] = "" if typed == "-" else (typed or getattr(self.instance, name, ""))
            setattr(self.instance, name, data[name])
        return data


@admin.register(RuntimeSettings)
class RuntimeSettingsAdmin(admin.ModelAdmin):
    form = RuntimeSettingsForm
    readonly_fields = ("version", "updated_at")
    fieldsets = (
        ("Answers", {"fields": ("thinking_format", "show_thinking", "show_search_results", "list_model_aliases")}),
        ("Time budgets", {"fields": ("first_byte_timeout", "idle_timeout", "total_timeout", "heartbeat_interval")}),
        ("Retries and accounts", {"fields": (
            "max_attempts", "retry_status_codes", "account_max_concurrent", "queue_timeout",
            "auth_failure_threshold", "cooldown_seconds")}),
        ("Background jobs", {"fields": (
            "quota_refresh_interval", "recovery_probe_interval", "probe_expired_accounts")}),
        ("Proxies", {"fields": (
            "proxy_mode", "proxy_url", "proxy_pool_url", "proxy_pool_interval", "proxy_health_interval",
            "cf_clearance")}),
        ("Upstream", {"fields": (
            "impersonate", "user_agent", "statsig_mode", "statsig_id", "max_upstream_streams")}),
        ("In force", {"fields": ("version", "updated_at")}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RuntimeSettings | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        row = load_row()
        return HttpResponseRedirect(reverse("admin:pools_runtimesettings_change", args=[row.pk]))

    def response_change(self, request: HttpRequest, obj: RuntimeSettings) -> HttpResponse:
        self.message_user(request, f"Saved: version {obj.version} is in force; all workers apply it within a second.")
        return HttpResponseRedirect(request.path)
