"""The operator UI for proxies: health at a glance, bound accounts, a "Test now" action.

A proxy URL's password and a proxy's `cf_clearance` never reach the page: lists
show the masked forms; the change form shows them read-only and takes
replacements in separate, never pre-filled fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.text import Truncator

from gateway import grok
from pools import proxies
from pools.admin.accounts import SecretInput
from pools.models import Proxy, ProxyHealth, mask_token
from pools.settings import aget_runtime

if TYPE_CHECKING:
    from typing import TypeAlias, TypedDict

    from django_stubs_ext import WithAnnotations

    class _Bound(TypedDict):
        bound_count: int

    # A proxy as ProxyAdmin.get_queryset returns it, annotated with its number of bound accounts.
    BoundProxy: TypeAlias = WithAnnotations[Proxy, _Bound]

URL_HELP = "http://, https://, socks5:// or socks5h://[user:password@]host:port (socks5 is stored as socks5h)."
CLEARANCE_HELP = "A cf_clearance cookie solved from this proxy's IP, with the user agent below."


def _proxies(n: int) -> str:
    return f"{n} prox{'ies' if n != 1 else 'y'}"


def _clean_url(value: str, instance: Proxy | None = None) -> str:
    try:
        url = proxies.normalize_proxy_url(value)
    except ValueError as exc:
        raise forms.ValidationError(f"Not a usable proxy URL: {exc}.") from exc
    others = Proxy.objects.filter(url=url)
    if instance is not None:
        others = others.exclude(pk=instance.pk)
    if others.exists():
        raise forms.ValidationError("This proxy is already in the list.")
    return url


class ProxyAddForm(forms.ModelForm):
    url = forms.CharField(help_text=URL_HELP, widget=forms.TextInput(attrs={"size": 80, "autocomplete": "off"}))
    cf_clearance = forms.CharField(required=False, widget=SecretInput(), help_text=CLEARANCE_HELP)

    class Meta:
        model = Proxy
        fields = ["url", "enabled", "cf_clearance", "user_agent"]

    def clean_url(self) -> str:
        return _clean_url(self.cleaned_data["url"])

    def validate_unique(self) -> None:
        pass  # `clean_url` checked the normalised URL


class ProxyChangeForm(forms.ModelForm):
    replace_url = forms.CharField(
        required=False, help_text=f"Leave empty to keep the current URL. {URL_HELP}",
        widget=forms.TextInput(attrs={"size": 80, "autocomplete": "off"}),
    )
    replace_cf_clearance = forms.CharField(
        required=False, widget=SecretInput(), help_text=f"Leave empty to keep the current value. {CLEARANCE_HELP}"
    )
    clear_cf_clearance = forms.BooleanField(required=False, help_text="Remove this proxy's cf_clearance.")

    class Meta:
        model = Proxy
        fields = ["enabled", "user_agent"]

    def clean_replace_url(self) -> str:
        value = self.cleaned_data["replace_url"]
        return _clean_url(value, self.instance) if value.strip() else ""

    def save(self, commit: bool = True) -> Proxy:
        data = self.cleaned_data
        if data.get("replace_url") and data["replace_url"] != self.instance.url:
            self.instance.url = data["replace_url"]
            self.instance.health = ProxyHealth.UNKNOWN  # another address: test it again
        if data.get("clear_cf_clearance"):
            self.instance.cf_clearance = ""
        elif data.get("replace_cf_clearance", "").strip():
            self.instance.cf_clearance = data["replace_cf_clearance"].strip()
        return super().save(commit)


class HealthFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("usable", "Usable (enabled, not failed)"), *ProxyHealth.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Proxy]) -> QuerySet[Proxy]:
        if self.value() == "usable":
            return queryset.filter(enabled=True).exclude(health=ProxyHealth.FAILED)
        if self.value() in ProxyHealth.values:
            return queryset.filter(health=self.value())
        return queryset


class BoundFilter(admin.SimpleListFilter):
    title = "bound accounts"
    parameter_name = "bound"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Has bound accounts"), ("no", "No bound accounts")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[BoundProxy]) -> QuerySet[BoundProxy]:
        if self.value() == "yes":
            return queryset.filter(bound_count__gt=0)
        if self.value() == "no":
            return queryset.filter(bound_count=0)
        return queryset


@admin.register(Proxy)
class ProxyAdmin(admin.ModelAdmin):
    form = ProxyChangeForm
    add_form = ProxyAddForm
    list_display = [
        "masked",
        "enabled",
        "health_shown",
        "bound",
        "failure_count",
        "last_error_short",
        "last_checked_at",
        "last_ok_at",
        "clearance",
        "source",
    ]
    list_filter = [HealthFilter, "enabled", "source", BoundFilter]
    list_per_page = 100
    actions = ["test_now", "enable_proxies", "disable_proxies"]
    state_fields = ["health", "bound", "failure_count", "last_error", "last_checked_at", "last_ok_at", "source",
                    "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[BoundProxy]:
        return super().get_queryset(request).annotate(bound_count=Count("accounts"))

    def get_form(self, request: HttpRequest, obj: Proxy | None = None, change: bool = False,
                 **kwargs: Any) -> type[forms.ModelForm]:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Proxy | None = None) -> list:
        if obj is None:
            return [(None, {"fields": ["url", "enabled", "cf_clearance", "user_agent"]})]
        return [
            (None, {"fields": ["masked", "replace_url", "enabled"]}),
            ("Cloudflare", {"fields": ["clearance", "replace_cf_clearance", "clear_cf_clearance", "user_agent"]}),
            ("State", {"fields": self.state_fields}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Proxy | None = None) -> list[str]:
        return [] if obj is None else ["masked", "clearance", *self.state_fields]

    @admin.display(description="Proxy", ordering="url")
    def masked(self, obj: Proxy) -> str:
        return format_html('<span style="white-space: nowrap">{}</span>', obj.masked_url)

    @admin.display(description="Health", ordering="health")
    def health_shown(self, obj: Proxy) -> str:
        # Keyed by str: a TextChoices member is its value, so the stored string finds it.
        icons: dict[str, str] = {ProxyHealth.OK: "✔", ProxyHealth.FAILED: "✘"}
        icon = icons.get(obj.health, "?")
        return format_html("{} {}", icon, obj.get_health_display())

    @admin.display(description="Bound accounts", ordering="bound_count")
    def bound(self, obj: BoundProxy) -> int:
        return obj.bound_count  # annotated in get_queryset, which the change view uses too

    @admin.display(description="cf_clearance")
    def clearance(self, obj: Proxy) -> str:
        return mask_token(obj.cf_clearance) if obj.cf_clearance else "—"

    @admin.display(description="Last error", ordering="last_error")
    def last_error_short(self, obj: Proxy) -> str:
        if not obj.last_error:
            return ""
        return format_html('<span title="{}">{}</span>', obj.last_error, Truncator(obj.last_error).chars(60))

    @admin.action(description="Test selected proxies now", permissions=["change"])
    def test_now(self, request: HttpRequest, queryset: QuerySet[Proxy]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        report = async_to_sync(_check)(ids)
        level = messages.WARNING if report.failed else messages.SUCCESS
        text = f"Tested {_proxies(len(ids))}: {report}."
        failed = Proxy.objects.filter(pk__in=list(report.errors)).order_by("id")[:3]
        for proxy in failed:
            text += f" {proxy.masked_url}: {Truncator(report.errors[proxy.pk]).chars(160)}"
        self.message_user(request, text, level)

    @admin.action(description="Enable selected proxies", permissions=["change"])
    def enable_proxies(self, request: HttpRequest, queryset: QuerySet[Proxy]) -> None:
        n = proxies.enable_proxies(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Enabled {_proxies(n)}.", messages.SUCCESS)

    @admin.action(description="Disable selected proxies (unbinds their accounts)", permissions=["change"])
    def disable_proxies(self, request: HttpRequest, queryset: QuerySet[Proxy]) -> None:
        n = proxies.disable_proxies(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Disabled {_proxies(n)}.", messages.SUCCESS)


async def _check(ids: list[int]) -> proxies.HealthReport:
    # async_to_sync may run this on a loop of its own: use a session that closes with the block.
    runtime = await aget_runtime()
    async with grok.own_session(proxies.client_config(runtime)):
        return await proxies.check_proxies(ids)
