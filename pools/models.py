"""Grok accounts (SSO tokens) and their state.

State changes go through the methods here; nothing else calls `.save()` on an
`Account`. Each method is one conditional UPDATE so concurrent requests in one
process never overwrite each other's counters.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

TIER_ORDER = {"basic": 0, "super": 1, "heavy": 2}


def tiers_at_least(tier: str) -> list[str]:
    """The account tiers able to serve a model that needs `tier` (a heavy account serves all)."""
    return [name for name, rank in TIER_ORDER.items() if rank >= TIER_ORDER[tier]]


def mask_token(token: str) -> str:
    """`eyJhbGciOi…Xk3Q` style: enough to tell accounts apart, never the whole secret."""
    if len(token) <= 12:
        return token[:2] + "…" if token else ""
    return f"{token[:6]}…{token[-4:]}"


class Tier(models.TextChoices):
    BASIC = "basic", "Basic"
    SUPER = "super", "Super"
    HEAVY = "heavy", "Heavy"


class Status(models.TextChoices):
    ACTIVE = "active", "Active"
    COOLING = "cooling", "Cooling down"
    EXPIRED = "expired", "Expired"
    DISABLED = "disabled", "Disabled"


class AccountQuerySet(models.QuerySet):
    def able_to_serve(self, tier: str) -> AccountQuerySet:
        return self.filter(tier__in=tiers_at_least(tier))

    def usable(self, now: datetime) -> AccountQuerySet:
        """Active, or cooling with a window that has already ended (a null window counts as ended)."""
        ended = Q(cooldown_until__isnull=True) | Q(cooldown_until__lte=now)
        return self.filter(Q(status=Status.ACTIVE) | (Q(status=Status.COOLING) & ended))

    def end_cooldowns(self, now: datetime) -> int:
        """Put accounts whose cooldown window has passed back in rotation; returns how many."""
        return (
            self.filter(status=Status.COOLING)
            .filter(Q(cooldown_until__isnull=True) | Q(cooldown_until__lte=now))
            .update(status=Status.ACTIVE, cooldown_until=None)
        )

    # Bulk operator actions (admin). Each returns the number of rows it changed.

    def enable(self) -> int:
        return self.exclude(status=Status.ACTIVE, cooldown_until__isnull=True).update(
            status=Status.ACTIVE, cooldown_until=None
        )

    def disable(self) -> int:
        return self.exclude(status=Status.DISABLED).update(status=Status.DISABLED, cooldown_until=None)

    def reset_failures(self) -> int:
        return self.exclude(failure_count=0, last_error="").update(failure_count=0, last_error="")


class Account(models.Model):
    token = models.TextField(unique=True, help_text="The `sso` cookie value. Shown masked.")
    tier = models.CharField(max_length=8, choices=Tier.choices, default=Tier.BASIC, db_index=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    cooldown_until = models.DateTimeField(null=True, blank=True)
    failure_count = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_used_at = models.DateTimeField(null=True, blank=True, db_index=True)
    use_count = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AccountQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.masked_token} ({self.tier})"

    @property
    def masked_token(self) -> str:
        return mask_token(self.token)

    def _update(self, **fields: object) -> None:
        Account.objects.filter(pk=self.pk).update(**fields)
        self.refresh_from_db()

    def claim(self, now: datetime) -> bool:
        """Mark this account used, if nobody else did since it was read.

        The row count of the conditional UPDATE decides who won, so two workers that
        read the same least-recently-used row cannot both take it.
        """
        won = Account.objects.filter(pk=self.pk, status=Status.ACTIVE, use_count=self.use_count).update(
            last_used_at=now, use_count=F("use_count") + 1
        )
        if won:
            self.last_used_at, self.use_count = now, self.use_count + 1
        return bool(won)

    def mark_used(self) -> None:
        self._update(last_used_at=timezone.now(), use_count=F("use_count") + 1)

    def mark_success(self) -> None:
        self._update(failure_count=0, last_error="")

    def record_failure(self, reason: str) -> None:
        self._update(failure_count=F("failure_count") + 1, last_error=reason[:500])

    def mark_expired(self, reason: str) -> None:
        self._update(status=Status.EXPIRED, failure_count=F("failure_count") + 1, last_error=reason[:500])

    def cool_down(self, until: datetime, reason: str) -> None:
        self._update(status=Status.COOLING, cooldown_until=until, last_error=reason[:500])

    def cool_down_for(self, seconds: float, reason: str) -> None:
        self.cool_down(timezone.now() + timedelta(seconds=seconds), reason)

    def enable(self) -> None:
        self._update(status=Status.ACTIVE, cooldown_until=None)

    def disable(self, reason: str = "") -> None:
        self._update(status=Status.DISABLED, last_error=reason[:500] or self.last_error)

    def reset_failures(self) -> None:
        self._update(failure_count=0, last_error="")
