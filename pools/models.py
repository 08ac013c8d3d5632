"""The pools' tables: Grok accounts (SSO tokens) and their quotas, proxies, runtime settings, job runs.

Account and quota state changes go through the queryset methods here
(`AccountQuerySet`, `QuotaQuerySet`); nothing else writes those columns. Each
is one conditional UPDATE, so concurrent workers never overwrite each other's
counters.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connections, models, router, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Greatest

from gateway.grok import mask_proxy_url

TIER_ORDER = {"basic": 0, "super": 1, "heavy": 2}


def tiers_at_least(tier: str) -> list[str]:
    """The account tiers able to serve a model that needs `tier` (a heavy account serves all)."""
    return [name for name, rank in TIER_ORDER.items() if rank >= TIER_ORDER[tier]]


# Shorter tokens would give away too much of themselves in the long form's 10 characters.
MASK_LONG_FROM = 24


def mask_token(token: str) -> str:
    """`eyJhbG…Xk3Q` for a long token; `de…a1b2` for a short one: enough to tell accounts apart, never the secret.

    A short token shows at most 2 leading characters (fewer when very short) and, instead of its end,
    the first 4 hex digits of its sha256, so demo and test accounts that share a prefix stay distinct.
    """
    if not token:
        return ""
    if len(token) >= MASK_LONG_FROM:
        return f"{token[:6]}…{token[-4:]}"
    fingerprint = hashlib.sha256(token.encode()).hexdigest()[:4]
    return f"{token[:min(2, len(token) // 4)]}…{fingerprint}"


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
    def in_rotation(self) -> AccountQuerySet:
        """Active or cooling: a cooldown ends by itself, while expired and disabled accounts stay out."""
        return self.filter(status__in=[Status.ACTIVE, Status.COOLING])

    def usable(self, now: datetime) -> AccountQuerySet:
        """Able to serve as far as the account row goes: active, or cooling with a window that has
        already ended (a null window counts as ended). The one definition: leasing's rule states it
        in Python and SQL too (`pools.leasing.rule`, step 1), and its behaviour suite holds them to it."""
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

    # What requests and probes learn. Every account state change goes through these: each is
    # one conditional UPDATE, so workers settling outcomes at once never overwrite each other's
    # counters. `use` (last_used_at, use_count) also counts a use, for callers that record it here.

    def succeeded(self, **use: object) -> int:
        """The token answered: failures in a row end (written only where there is one to end)."""
        if use:
            return self.update(failure_count=0, last_error="", **use)
        return self.reset_failures()

    def failed(self, reason: str, **use: object) -> int:
        """A failure that may be the account's: counted."""
        return self.update(failure_count=F("failure_count") + 1, last_error=reason[:500], **use)

    def noted(self, reason: str, **use: object) -> int:
        """A failure that is not the account's (proxy, network, Grok down, a 429): shown, not counted."""
        return self.update(last_error=reason[:500], **use)

    def rejected(self, reason: str, threshold: int, **use: object) -> int:
        """Grok refused the token (401): counted; expired at `threshold` in a row, never when disabled."""
        at_threshold = Q(failure_count__gte=max(threshold, 1) - 1) & ~Q(status=Status.DISABLED)
        return self.update(
            failure_count=F("failure_count") + 1,
            last_error=reason[:500],
            status=Case(When(at_threshold, then=Value(Status.EXPIRED)), default=F("status")),
            **use,
        )

    def banned(self, reason: str, **use: object) -> int:
        """Grok blocks the account for good: disabled."""
        return self.update(status=Status.DISABLED, cooldown_until=None, last_error=f"banned: {reason}"[:500], **use)

    def cool_down(self, until: datetime, reason: str) -> int:
        """Out of rotation until `until` (every mode of an account in rotation is spent)."""
        return self.in_rotation().update(
            status=Status.COOLING, cooldown_until=until, last_error=reason[:500]
        )

    def revive(self) -> int:
        """An expired account whose token answers again is active again."""
        return self.filter(status=Status.EXPIRED).update(status=Status.ACTIVE, cooldown_until=None)

    def resume(self) -> int:
        """A cooling account with quota again is back in rotation."""
        return self.filter(status=Status.COOLING).update(status=Status.ACTIVE, cooldown_until=None)

    def bind_proxy(self, proxy: Proxy) -> int:
        """Bind these accounts to `proxy` (callers filter on the binding they read: a lost race binds nothing)."""
        return self.update(proxy=proxy)

    def unbind_proxies(self) -> int:
        """Forget these accounts' proxy bindings (the next request binds them again)."""
        return self.exclude(proxy=None).update(proxy=None)

    def add_uses(self, uses: list[tuple[int, int, datetime | None]]) -> None:
        """Add each (account id, uses, last use) and move `last_used_at` forward, never back
        (another worker, or a failure settled at once, may have written a later one).

        One prepared UPDATE run once per account: the ORM's CASE of one WHEN per account, built
        every second by the usage ledger, cost more CPU than the statement itself (docs/benchmarks.md).
        """
        connection = connections[self.db]
        quote = connection.ops.quote_name
        table = quote(Account._meta.db_table)
        count, last, pk = (quote(field.column) for field in (
            Account._meta.get_field("use_count"), Account._meta.get_field("last_used_at"), Account._meta.pk,
        ) if isinstance(field, models.Field))
        adapt = connection.ops.adapt_datetimefield_value
        dated = [(n, adapt(at), adapt(at), pk_) for pk_, n, at in uses if at is not None]
        undated = [(n, pk_) for pk_, n, at in uses if at is None]
        with connection.cursor() as cursor:
            if dated:
                cursor.executemany(
                    f"UPDATE {table} SET {count} = {count} + %s, {last} = CASE WHEN {last} IS NULL OR {last} < %s "
                    f"THEN %s ELSE {last} END WHERE {pk} = %s",
                    dated,
                )
            if undated:
                cursor.executemany(f"UPDATE {table} SET {count} = {count} + %s WHERE {pk} = %s", undated)


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
    priority = models.IntegerField(
        default=0, help_text="Higher is leased first; ties go to the fewest in flight, then most quota, then LRU."
    )
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests in flight at once; empty: the runtime default."
    )
    proxy = models.ForeignKey(
        "Proxy", null=True, blank=True, on_delete=models.SET_NULL, related_name="accounts",
        help_text="Sticky proxy binding: a cf_clearance belongs to the IP that solved it.",
    )

    objects = AccountQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.masked_token} ({self.tier})"

    @property
    def masked_token(self) -> str:
        return mask_token(self.token)


class QuotaQuerySet(models.QuerySet):
    def debit(self, cost: int) -> int:
        """Local estimate until the next sync: `remaining` never goes below 0; unknown stays unknown."""
        return self.filter(remaining__isnull=False).update(remaining=Greatest(F("remaining") - cost, Value(0)))

    def cool(self, account_id: int, mode: str, until: datetime) -> None:
        """This mode of the account, and only this mode, is out until `until`; its count is spent."""
        if self.filter(account_id=account_id, mode=mode).update(cooldown_until=until, remaining=0):
            return
        try:
            with transaction.atomic(using=self.db):
                self.create(account_id=account_id, mode=mode, cooldown_until=until, remaining=0)
        except IntegrityError:  # another worker created the row first
            self.filter(account_id=account_id, mode=mode).update(cooldown_until=until, remaining=0)

    def record_reading(self, account_id: int, mode: str, remaining: int, total: int | None, window: int | None,
                       now: datetime, cooldown_seconds: float) -> None:
        """What Grok's rate-limits said: a mode at zero cools down until its window resets."""
        resets_at = now + timedelta(seconds=window) if window else None
        cooldown = (resets_at or now + timedelta(seconds=cooldown_seconds)) if remaining <= 0 else None
        self.update_or_create(account_id=account_id, mode=mode, defaults={
            "remaining": remaining, "total": total, "window_seconds": window, "resets_at": resets_at,
            "cooldown_until": cooldown, "synced_at": now,
        })

    def stretch_cooldown(self, account_id: int, mode: str, total: int | None, window: int, now: datetime) -> int:
        """A spent mode is out until its real reset; a cooldown is never shortened."""
        resets_at = now + timedelta(seconds=window)
        return self.filter(account_id=account_id, mode=mode).filter(
            Q(cooldown_until__isnull=True) | Q(cooldown_until__lt=resets_at)
        ).update(cooldown_until=resets_at, resets_at=resets_at, remaining=0, total=total, window_seconds=window,
                 synced_at=now)

    def spent_until(self, account_id: int, modes: tuple[str, ...], now: datetime) -> datetime | None:
        """When every one of `modes` is known to be at zero: the first reset among them (else None)."""
        rows = list(self.filter(account_id=account_id, mode__in=modes).values_list("remaining", "cooldown_until"))
        if len(rows) < len(modes):
            return None
        if any(remaining is None or remaining > 0 or until is None or until <= now for remaining, until in rows):
            return None
        return min(until for _, until in rows)


class Quota(models.Model):
    """What Grok's `/rest/rate-limits` said for one account and mode, debited locally between syncs.

    A 429 for a mode cools that mode only (`cooldown_until`); the account's other
    modes stay in service.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="quotas")
    mode = models.CharField(max_length=32)  # fast | auto | expert | heavy | …
    remaining = models.IntegerField(null=True, blank=True, help_text="Empty: unknown (never synced).")
    total = models.IntegerField(null=True, blank=True)
    window_seconds = models.PositiveIntegerField(null=True, blank=True)
    resets_at = models.DateTimeField(null=True, blank=True)
    cooldown_until = models.DateTimeField(null=True, blank=True, db_index=True)
    synced_at = models.DateTimeField(null=True, blank=True)

    objects = QuotaQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "mode"], name="quota_account_mode")]
        ordering = ["account_id", "mode"]

    def __str__(self) -> str:
        return f"{self.mode}: {self.remaining if self.remaining is not None else '?'}/{self.total or '?'}"


class LeaseRecord(models.Model):
    """One request in flight on an account (PostgreSQL backend). Expires if its worker dies."""

    key = models.CharField(max_length=40, unique=True)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="lease_records")
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)


class ProxyHealth(models.TextChoices):
    OK = "ok", "Healthy"
    FAILED = "failed", "Failed"
    UNKNOWN = "unknown", "Not tested"


class ProxySource(models.TextChoices):
    MANUAL = "manual", "Added by an operator"
    POOL_URL = "pool_url", "Fetched from the proxy-pool URL"
    ENV = "env", "PROXY_URL"


class Proxy(models.Model):
    url = models.CharField(max_length=500, unique=True, help_text="http://, https://, socks5:// or socks5h://")
    enabled = models.BooleanField(default=True)
    source = models.CharField(max_length=10, choices=ProxySource.choices, default=ProxySource.MANUAL)
    health = models.CharField(max_length=8, choices=ProxyHealth.choices, default=ProxyHealth.UNKNOWN)
    failure_count = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True)
    cf_clearance = models.TextField(blank=True, default="", help_text="Solved from this proxy's IP. Shown masked.")
    user_agent = models.CharField(max_length=400, blank=True, default="", help_text="The one that solved it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "proxies"

    def __str__(self) -> str:
        return self.masked_url

    @property
    def masked_url(self) -> str:
        return mask_proxy_url(self.url)


THINKING_FORMATS = [("reasoning_content", "reasoning_content field"), ("think", "<think>…</think> in content")]


class RuntimeSettings(models.Model):
    """The one row of settings operators change at run time (read through `pools.settings`).

    Environment variables give the first values; after that this row is what is in
    force. Saving bumps `version`; `pools.settings` publishes it once the save commits
    (a `post_save` receiver), and every worker reloads within a second.
    A field here is one something reads: add it with the feature that uses it.
    """

    PROXY_MODES = [
        ("none", "No proxy"), ("static", "One static proxy (PROXY_URL)"),
        ("list", "The proxies listed in the admin"), ("pool_url", "Fetched from a proxy-pool URL"),
    ]
    STATSIG_MODES = [("generated", "Generated per request"), ("static", "The static value below")]

    thinking_format = models.CharField(max_length=20, choices=THINKING_FORMATS, default="reasoning_content")
    show_thinking = models.BooleanField(default=True)
    show_search_results = models.BooleanField(default=True)
    list_model_aliases = models.BooleanField(
        default=False, help_text="GET /v1/models lists the alias ids too (they work in requests either way)."
    )
    first_byte_timeout = models.FloatField(default=30.0, help_text="Seconds until Grok's first frame.")
    idle_timeout = models.FloatField(default=60.0, help_text="Seconds allowed between two frames.")
    total_timeout = models.FloatField(default=600.0, help_text="Seconds for a whole answer.")
    heartbeat_interval = models.FloatField(default=15.0, help_text="Seconds of silence before a keep-alive.")
    max_attempts = models.PositiveIntegerField(default=3, help_text="Accounts tried per request.")
    retry_status_codes = models.CharField(
        max_length=100, default="500,502,503,504", help_text="Upstream statuses retried on another account."
    )
    account_max_concurrent = models.PositiveIntegerField(default=4, help_text="Default in-flight limit per account.")
    queue_timeout = models.FloatField(default=30.0, help_text="Seconds a request waits for a free account slot.")
    auth_failure_threshold = models.PositiveIntegerField(
        default=1, help_text="401s in a row before an account is marked expired."
    )
    cooldown_seconds = models.FloatField(default=300.0, help_text="Cooldown after a 429 that names no window.")
    quota_refresh_interval = models.PositiveIntegerField(default=1800, help_text="Seconds between quota syncs.")
    recovery_probe_interval = models.PositiveIntegerField(default=60, help_text="Seconds between recovery probes.")
    probe_expired_accounts = models.BooleanField(default=False, help_text="Also probe expired accounts.")
    proxy_mode = models.CharField(max_length=10, choices=PROXY_MODES, default="none")
    proxy_url = models.CharField(max_length=500, blank=True, default="", help_text="Static proxy.")
    proxy_pool_url = models.CharField(max_length=500, blank=True, default="", help_text="Returns one proxy URL.")
    proxy_pool_interval = models.PositiveIntegerField(default=300, help_text="Seconds between pool fetches.")
    proxy_health_interval = models.PositiveIntegerField(default=300, help_text="Seconds between proxy checks.")
    cf_clearance = models.TextField(blank=True, default="", help_text="Used when no proxy carries its own.")
    impersonate = models.CharField(max_length=40, default="chrome136")
    user_agent = models.CharField(max_length=400, blank=True, default="")
    statsig_mode = models.CharField(max_length=10, choices=STATSIG_MODES, default="generated")
    statsig_id = models.TextField(blank=True, default="")
    max_upstream_streams = models.PositiveIntegerField(default=1000, help_text="Upstream transfers per worker.")
    version = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "runtime settings"
        verbose_name_plural = "runtime settings"

    def __str__(self) -> str:
        return f"Runtime settings (version {self.version})"

    def clean(self) -> None:
        errors = {}
        for name in ("first_byte_timeout", "idle_timeout", "total_timeout", "queue_timeout"):
            if getattr(self, name) <= 0:
                errors[name] = "Must be more than 0 seconds."
        if self.heartbeat_interval < 0:
            errors["heartbeat_interval"] = "Must be 0 (off) or more."
        if self.max_attempts < 1:
            errors["max_attempts"] = "At least 1."
        if self.account_max_concurrent < 1:
            errors["account_max_concurrent"] = "At least 1."
        codes = [c.strip() for c in self.retry_status_codes.split(",") if c.strip()]
        if any(not c.isdigit() or not 400 <= int(c) <= 599 for c in codes):
            errors["retry_status_codes"] = "A comma-separated list of HTTP statuses (400-599), e.g. 500,502,503."
        if self.proxy_mode == "static" and not self.proxy_url:
            errors["proxy_url"] = "The static proxy mode needs a proxy URL."
        if self.proxy_mode == "pool_url" and not self.proxy_pool_url:
            errors["proxy_pool_url"] = "The pool URL mode needs a pool URL."
        if self.statsig_mode == "static" and not self.statsig_id:
            errors["statsig_id"] = "The static statsig mode needs a value."
        if errors:
            raise ValidationError(errors)

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The next version is read under a row lock (SQLite: the IMMEDIATE write transaction), so
        # two saves at once (the admin and `runtime set`) never publish the same number.
        using = kwargs.get("using") or router.db_for_write(RuntimeSettings, instance=self)
        with transaction.atomic(using=using):
            if not self._state.adding:
                current = RuntimeSettings.objects.using(using).select_for_update().filter(pk=self.pk)
                self.version = (current.values_list("version", flat=True).first() or self.version or 0) + 1
            super().save(*args, **kwargs)


class JobRun(models.Model):
    """The last run of one periodic job, cluster-wide (the job takes a lock before it runs)."""

    name = models.CharField(max_length=60, unique=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=10, blank=True, default="")  # ok | failed
    message = models.TextField(blank=True, default="")
    runs = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BulkTask(models.Model):
    """An admin bulk action running in the background, with progress the admin can show."""

    kind = models.CharField(max_length=40)  # refresh_quota | test | enable | disable | reset_failures | delete
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, default="queued")  # queued | running | done | failed
    message = models.TextField(blank=True, default="")
    account_ids = models.JSONField(default=list)
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.done}/{self.total} ({self.status})"
