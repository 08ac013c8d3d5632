"""The account changelist's filters: status, quota, cooling, proxy, failures.

Each is one `EXISTS` or one condition on the account row, so a filter costs no
query per row whatever the pool's size.
"""

from __future__ import annotations

from typing import cast

from django.contrib import admin
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from pools.models import Account, AccountQuerySet, ProxyHealth, Quota, Status


def _quota(**conditions: object) -> Exists:
    return Exists(Quota.objects.filter(account=OuterRef("pk"), **conditions))



def _accounts(queryset: QuerySet[Account]) -> AccountQuerySet:
    """The changelist's queryset is `Account.objects`' own: its state filters are there (Django types it plainly)."""
    return cast(AccountQuerySet, queryset)

class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("usable", "Usable now"), *Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Account]) -> QuerySet[Account]:
        if self.value() == "usable":
            # Cooling accounts whose window ended count: the next lease flips them back.
            return _accounts(queryset).usable(timezone.now())
        if self.value() in Status.values:
            return queryset.filter(status=self.value())
        return queryset


class QuotaFilter(admin.SimpleListFilter):
    title = "quota"
    parameter_name = "quota"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("left", "Quota left in a mode"), ("empty", "A mode at zero"), ("unknown", "Never synced")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Account]) -> QuerySet[Account]:
        if self.value() == "left":
            return queryset.filter(_quota(remaining__gt=0))
        if self.value() == "empty":
            return queryset.filter(_quota(remaining=0))
        if self.value() == "unknown":
            return queryset.exclude(_quota(synced_at__isnull=False))
        return queryset


class CoolingFilter(admin.SimpleListFilter):
    """Cooling as a whole account or in one mode; "over" are cooldowns the recovery probe has yet to check."""

    title = "cooling"
    parameter_name = "cooling"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("now", "Cooling now (any mode)"), ("over", "Cooldown over, not yet probed"), ("no", "Not cooling")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Account]) -> QuerySet[Account]:
        now = timezone.now()
        account_now = Q(status=Status.COOLING, cooldown_until__gt=now)
        mode_now = _quota(cooldown_until__gt=now)
        if self.value() == "now":
            return queryset.filter(account_now | mode_now)
        if self.value() == "over":
            # A cooling account whose window ended is usable again (the next lease flips it back).
            ended = _accounts(queryset).filter(status=Status.COOLING).usable(now)
            return ended | queryset.filter(_quota(cooldown_until__lte=now))
        if self.value() == "no":
            return queryset.exclude(status=Status.COOLING).exclude(_quota(cooldown_until__isnull=False))
        return queryset


class ProxyFilter(admin.SimpleListFilter):
    title = "proxy"
    parameter_name = "proxy"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("none", "No proxy bound"), ("bound", "Bound to a proxy"), ("failed", "Bound to a failed proxy")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Account]) -> QuerySet[Account]:
        if self.value() == "none":
            return queryset.filter(proxy__isnull=True)
        if self.value() == "bound":
            return queryset.filter(proxy__isnull=False)
        if self.value() == "failed":
            return queryset.filter(proxy__health=ProxyHealth.FAILED)
        return queryset


class FailuresFilter(admin.SimpleListFilter):
    title = "failures"
    parameter_name = "failing"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Has failures"), ("no", "No failures")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Account]) -> QuerySet[Account]:
        if self.value() == "yes":
            return queryset.filter(failure_count__gt=0)
        if self.value() == "no":
            return queryset.filter(failure_count=0)
        return queryset
