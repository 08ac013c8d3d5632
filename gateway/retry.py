"""The retry policy: what a failed attempt means, and what the next attempt does about it.

Only before the first byte has gone to the client (`gateway.service.open_chat`
runs the attempts, at most `max_attempts` of them):

| upstream answer                                  | account outcome | next step                         |
| ------------------------------------------------ | --------------- | --------------------------------- |
| 401 / invalid credentials                        | expired (1)     | another account, at once          |
| 403 `blocked-user`                               | banned          | another account, at once          |
| 429 / "usage limit"                              | cooling         | another account, at once          |
| 403 Cloudflare / anti-bot, proxy failure         | not charged     | another proxy (2)                 |
| a status in `retry_status_codes`, network error, | failure         | another account, after a backoff  |
| an empty answer                                  |                 | with jitter                       |
| another 5xx or 4xx, garbage                      | failure         | 502 now                           |
| our own timeout                                  | failure         | 504 now                           |

(1) the lease release counts the failure and expires the account past the
runtime `auth_failure_threshold`. (2) the proxy is marked failed and its accounts
unbound; with no proxy to rotate (none, static, or none left) the client gets a
502 naming the fix: a proxy or a `cf_clearance`.
"""

from __future__ import annotations

import enum
import logging
import random
from urllib.parse import urlsplit

from django.conf import settings

from gateway.errors import GatewayTimeout, OpenAIError, RateLimited, ServiceUnavailable, UpstreamFailed
from gateway.grok import (
    UpstreamAuthError,
    UpstreamBanned,
    UpstreamBlocked,
    UpstreamError,
    UpstreamProxyFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.models import ModelSpec
from pools.proxies import ProxyChoice
from pools.selection import Lease, Outcome

logger = logging.getLogger(__name__)

BACKOFF_BASE = 0.1  # seconds before the first retry of a transient failure; doubles each time
BACKOFF_CAP = 2.0


class Step(enum.Enum):
    NEXT_ACCOUNT = "next_account"  # the account's fault: set it aside, try another at once
    NEXT_PROXY = "next_proxy"  # the route was refused: mark the proxy, try another proxy
    BACKOFF = "backoff"  # transient: wait a little, then another account
    GIVE_UP = "give_up"  # answer the client now


def next_step(exc: UpstreamError, retry_status_codes: frozenset[int], *, rotatable: bool) -> Step:
    """What to do after `exc`; `rotatable` says whether the proxy used is one we can swap."""
    if isinstance(exc, UpstreamAuthError | UpstreamRateLimited):  # 401, blocked-user, 429
        return Step.NEXT_ACCOUNT
    if isinstance(exc, UpstreamBlocked | UpstreamProxyFailed):
        return Step.NEXT_PROXY if rotatable else Step.GIVE_UP
    if isinstance(exc, UpstreamTimeout):
        return Step.GIVE_UP
    if exc.status is not None:
        return Step.BACKOFF if exc.status in retry_status_codes else Step.GIVE_UP
    # No status: a network error, a cut or empty answer, an unnamed in-band error.
    return Step.BACKOFF if isinstance(exc, UpstreamUnavailable) else Step.GIVE_UP


def backoff_delay(retry: int) -> float:
    """Seconds to wait before the `retry`-th transient retry: exponential, capped, with jitter."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(retry - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


def outcome_for(exc: UpstreamError) -> tuple[Outcome, float | None]:
    """What the failure says about the account, for `Lease.release`."""
    if isinstance(exc, UpstreamBanned):
        return Outcome.BANNED, None
    if isinstance(exc, UpstreamAuthError):
        return Outcome.EXPIRED, None
    if isinstance(exc, UpstreamRateLimited):
        return Outcome.RATE_LIMITED, exc.retry_after
    if isinstance(exc, UpstreamBlocked | UpstreamProxyFailed):
        return Outcome.CANCELLED, None  # the route was refused, not the account
    return Outcome.FAILURE, None


def to_openai(exc: UpstreamError, model: ModelSpec | None, attempts: int = 1) -> OpenAIError:
    """The client-facing error for an upstream failure that we are not going to retry."""
    if isinstance(exc, UpstreamTimeout):
        return GatewayTimeout(f"Upstream timeout: {exc}. Raise the {exc.phase} timeout if answers are slow.")
    if isinstance(exc, UpstreamBlocked):
        return UpstreamFailed(
            f"Grok refused the request from this gateway ({exc}). Route it through a proxy (PROXY_URL) "
            "or set CF_CLEARANCE to a cf_clearance cookie solved from the same IP and user agent.",
            code="upstream_blocked",
        )
    if isinstance(exc, UpstreamProxyFailed):
        return UpstreamFailed(
            f"The proxy in front of Grok failed ({exc}). Fix PROXY_URL or the proxies in the admin, "
            "or add another proxy.",
            code="proxy_failed",
        )
    if isinstance(exc, UpstreamRateLimited):
        return RateLimited(f"Every account tried is rate-limited by Grok: {exc}", retry_after=exc.retry_after or 60)
    if isinstance(exc, UpstreamAuthError):
        name = model.id if model else "this model"
        return ServiceUnavailable(
            f"No usable account for {name}: Grok rejected the accounts tried ({exc}). "
            "Import fresh sso tokens with `manage.py import_tokens`."
        )
    if isinstance(exc, UpstreamUnavailable):
        if exc.network_reason:  # name where we tried to go; curl's own text stays in the log (`detail`)
            return UpstreamFailed(
                f"Could not reach Grok at {_grok_host()} after {attempts} attempt(s): {exc.network_reason}; "
                "check the network or PROXY_URL.",
                code="upstream_unavailable", retryable=True,
            )
        return UpstreamFailed(f"Grok is unavailable after {attempts} attempt(s): {exc}", code="upstream_unavailable",
                              retryable=True)
    return UpstreamFailed(f"Grok answered something this gateway cannot read: {exc}", code="upstream_protocol_error")


def _grok_host() -> str:
    return urlsplit(settings.GROK_BASE_URL).netloc or settings.GROK_BASE_URL


def log_attempt(
    attempt: int, limit: int, model: str, lease: Lease, choice: ProxyChoice | None,
    step: Step | None, exc: UpstreamError | None = None,
) -> None:
    """One line per attempt, `key=value`, with the masked token and proxy; never fails the request."""
    try:
        proxy = choice.masked_url if choice is not None else "direct"
        if exc is None:
            logger.info("attempt=%d/%d model=%s account=%s proxy=%s result=ok",
                        attempt, limit, model, lease.masked_token, proxy)
        else:
            logger.warning(
                "attempt=%d/%d model=%s account=%s proxy=%s result=%s status=%s next=%s error=%r%s",
                attempt, limit, model, lease.masked_token, proxy, type(exc).__name__,
                exc.status if exc.status is not None else "-", step.value if step else "-", str(exc),
                f" detail={exc.detail!r}" if exc.detail else "",
            )
    except Exception:  # a log line must never fail a request
        logger.debug("could not log attempt %d", attempt, exc_info=True)
