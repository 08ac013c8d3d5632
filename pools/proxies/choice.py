"""The route of one request to Grok: which proxy, with which clearance and user agent."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db.models import Q

from gateway.grok import ClientConfig, mask_proxy_url
from pools.models import Proxy, ProxyHealth
from pools.settings import Runtime

# The columns a route needs (a proxy row is read on every request in list and pool_url modes).
PROXY_FIELDS = ["id", "url", "enabled", "health", "cf_clearance", "user_agent", "source"]
# Neither disabled nor failed (list mode also skips pool-fetched rows: `binding`).
USABLE = Q(enabled=True) & ~Q(health=ProxyHealth.FAILED)


class ProxyError(Exception):
    """No proxy could be chosen for a request."""


class NoProxyAvailable(ProxyError):
    """The proxy mode needs a proxy and none is usable; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ProxyChoice:
    """The route of one request: the proxy, and the clearance and user agent that go with its IP."""

    url: str = field(repr=False)
    cf_clearance: str = field(repr=False)
    user_agent: str
    proxy_id: int | None = None  # None: the static PROXY_URL, which has no row
    healthy: bool = False  # known healthy when chosen; `report_ok` writes only when not

    def __repr__(self) -> str:
        return f"<ProxyChoice {self.proxy_id or 'static'} {self.masked_url}>"

    @property
    def masked_url(self) -> str:
        return mask_proxy_url(self.url)


def client_config(runtime: Runtime, choice: ProxyChoice | None = None) -> ClientConfig:
    """How `gateway.grok` reaches Grok for one request: straight, or along `choice`."""
    config = ClientConfig(
        base_url=settings.GROK_BASE_URL,
        assets_url=settings.GROK_ASSETS_URL,
        impersonate=runtime.impersonate,
        user_agent=runtime.user_agent,
        statsig_id=runtime.statsig_constant,
        cf_clearance=runtime.cf_clearance,
        max_clients=runtime.max_upstream_streams,
    )
    if choice is None:
        return config
    return replace(config, proxy_url=choice.url, cf_clearance=choice.cf_clearance, user_agent=choice.user_agent)


def choice_of(proxy: Proxy, runtime: Runtime) -> ProxyChoice:
    """The route through `proxy`; the runtime `cf_clearance` and user agent fill in where it has none."""
    return ProxyChoice(
        url=proxy.url,
        cf_clearance=proxy.cf_clearance or runtime.cf_clearance,
        user_agent=proxy.user_agent or runtime.user_agent,
        proxy_id=proxy.pk,
        healthy=proxy.health == ProxyHealth.OK,
    )
