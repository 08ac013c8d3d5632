"""Proxies: which one a request to Grok leaves through, and what we learn about them.

    proxy_for(account_id) -> ProxyChoice | None, by the runtime `proxy_mode`:
        none      None: straight to Grok
        static    the runtime `proxy_url` (PROXY_URL); `proxy_id` None
        list      the account's sticky `Proxy` (`Account.proxy`), bound on first use to the
                  healthy enabled proxy with the fewest accounts, rebound when it fails
        pool_url  the current proxy fetched from `proxy_pool_url`, re-fetched every
                  `proxy_pool_interval` s (job `proxy_pool_fetch`) and once it has failed
    report_blocked(choice, reason)  a Cloudflare/anti-bot 403 or a proxy failure: the proxy is
                                    marked failed and its accounts unbound (the next
                                    `proxy_for` binds them elsewhere)
    report_ok(choice)               a request got through: mark the proxy healthy if it was not
    check_proxies(ids=None)         probe proxies through `gateway.grok`, restore the ones
                                    that work (job `proxy_health`, admin "Test now")

    ProxyError
     └── NoProxyAvailable           the mode needs a proxy and none is usable

Modules: `urls` (parsing), `choice` (a route and the client config it makes),
`binding` (list mode), `pool_url` (pool URL mode), `health` (what requests and
probes learn). The jobs are registered in `pools.schedule`.

A `cf_clearance` cookie belongs to the IP and user agent that solved it, so each
proxy carries its own; the runtime `cf_clearance` and user agent fill in when a
proxy has none. Bindings, health and the pool's current proxy live in the
database, so every worker sees the same ones. A worker's only local state is a
lock that keeps its own concurrent requests from fetching the pool URL at once.
"""

from pools.proxies.binding import proxy_for
from pools.proxies.choice import NoProxyAvailable, ProxyChoice, ProxyError, choice_of, client_config
from pools.proxies.health import (
    HealthReport,
    check_proxies,
    disable_proxies,
    enable_proxies,
    report_blocked,
    report_ok,
)
from pools.proxies.pool_url import refresh_pool_proxy
from pools.proxies.urls import SCHEMES, normalize_proxy_url, parse_pool_answer

__all__ = [
    "SCHEMES", "HealthReport", "NoProxyAvailable", "ProxyChoice", "ProxyError", "check_proxies", "choice_of",
    "client_config", "disable_proxies", "enable_proxies", "normalize_proxy_url", "parse_pool_answer", "proxy_for",
    "refresh_pool_proxy", "report_blocked", "report_ok",
]
