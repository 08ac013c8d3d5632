"""What can go wrong upstream, named once: the `UpstreamError` hierarchy and the translations into it.

    UpstreamError                  anything that went wrong upstream
     ├── UpstreamAuthError         401 / invalid-credential 400: the account is invalid
     │    └── UpstreamBanned       403 `blocked-user`: the account is banned
     ├── UpstreamBlocked           403 Cloudflare challenge or anti-bot: change proxy / cf_clearance
     ├── UpstreamRateLimited       429 or "usage limit": cool the account down
     ├── UpstreamUnavailable       5xx, network, TLS, a cut transfer: retry elsewhere
     │    ├── UpstreamProxyFailed  the proxy in front of Grok failed (unreachable, refused, TLS): change proxy
     │    └── UpstreamTimeout      no first byte / idle gap / total time exceeded (ours)
     └── UpstreamProtocolError     an answer we cannot read

HTTP statuses and error bodies (`classify_error_body`), in-band stream errors
(`classify_inband_error`) and curl failures (`translate`, `upstream_error`) map
here; no module outside `gateway.grok` catches a curl_cffi exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from curl_cffi import CurlECode
from curl_cffi.requests.exceptions import ConnectionError as CurlConnectionError
from curl_cffi.requests.exceptions import ProxyError, RequestException, SSLError

# Body markers that decide what a 4xx means (protocol §11).
_CREDENTIAL_MARKERS = (
    "invalid-credentials", "bad-credentials", "failed to look up session id", "email-domain-rejected",
    "session not found", "account suspended", "token revoked", "token expired",
)
_BANNED_MARKERS = ("blocked-user", "user is blocked")


class UpstreamError(Exception):
    """Grok did not give us a usable answer."""

    network_reason = ""  # set on network failures: what happened, in our words ("connection refused…")

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        # The library's own wording (curl's, with its documentation URL): for the log, never for a client.
        self.detail = detail


class UpstreamAuthError(UpstreamError):
    """Grok rejected the account's credentials (401, or a 400 naming them)."""


class UpstreamBanned(UpstreamAuthError):
    """Grok says the account is blocked (`blocked-user`)."""


class UpstreamBlocked(UpstreamError):
    """Cloudflare or the anti-bot check refused the request: the IP or fingerprint, not the account."""

    def __init__(self, message: str, *, status: int | None = 403, kind: str = "cloudflare") -> None:
        super().__init__(message, status=status)
        self.kind = kind


class UpstreamRateLimited(UpstreamError):
    """The account hit its rate or usage limit for this mode."""

    def __init__(self, message: str, *, status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """5xx, a network or TLS failure, or a transfer cut short: worth retrying elsewhere."""


class UpstreamProxyFailed(UpstreamUnavailable):
    """The proxy in front of Grok failed: it did not resolve or connect, refused the tunnel, or broke TLS."""


class UpstreamTimeout(UpstreamUnavailable):
    """Grok sent nothing within one of our budgets (first byte, idle gap, total)."""

    def __init__(self, message: str, *, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class UpstreamProtocolError(UpstreamError):
    """Grok answered something that is not the protocol we speak."""


def classify_error_body(status: int, body: str, retry_after: float | None = None) -> UpstreamError:
    """Map an HTTP error status and its body to the hierarchy above."""
    text = body.lower()
    snippet = " ".join(body.split())[:200]
    if any(m in text for m in _BANNED_MARKERS):
        return UpstreamBanned(f"account is blocked by Grok: {snippet}", status=status)
    if status == 401 or (status == 400 and any(m in text for m in _CREDENTIAL_MARKERS)):
        return UpstreamAuthError(f"Grok rejected the account's sso token (HTTP {status})", status=status)
    if status == 403:
        if "anti-bot" in text:
            return UpstreamBlocked("Grok's anti-bot check rejected the request", kind="antibot")
        return UpstreamBlocked("Cloudflare blocked the request (challenge page)", kind="cloudflare")
    if status == 429:
        return UpstreamRateLimited(f"Grok rate limit: {snippet or 'too many requests'}", retry_after=retry_after)
    if status >= 500:
        return UpstreamUnavailable(f"Grok returned HTTP {status}", status=status)
    return UpstreamProtocolError(f"Grok returned HTTP {status}: {snippet}", status=status)


def classify_inband_error(message: str, code: object = None) -> UpstreamError:
    """An error that arrived inside a 200 stream, named like the HTTP status it stands for (§11.2)."""
    text = message.lower()
    if "usage limit" in text or "usage quota" in text or "rate limit" in text or "too many requests" in text:
        return UpstreamRateLimited(f"Grok rate limit: {message}", status=None)
    if code == 8:
        return UpstreamRateLimited(f"Grok rate limit: {message}", status=None)
    if any(m in text for m in _BANNED_MARKERS):
        return UpstreamBanned(f"account is blocked by Grok: {message}")
    if "anti-bot" in text or code == 7:
        return UpstreamBlocked(f"Grok's anti-bot check rejected the request: {message}", status=None, kind="antibot")
    if code == 16 or any(m in text for m in _CREDENTIAL_MARKERS):
        return UpstreamAuthError(f"Grok rejected the account: {message}")
    # Anything else stands for a 5xx: worth another account.
    return UpstreamUnavailable(f"Grok reported an error: {message}")


# With a proxy in use, curl connects to the proxy, so these failures are the proxy's.
_PROXY_CODES = {CurlECode.COULDNT_RESOLVE_PROXY, CurlECode.COULDNT_CONNECT, CurlECode.PROXY}


def _proxy_failure(exc: RequestException) -> bool:
    if isinstance(exc, ProxyError | SSLError):
        return True
    return isinstance(exc, CurlConnectionError) and getattr(exc, "code", None) in _PROXY_CODES


# curl's failures in our words; the rest are "network error (curl code N)".
_REASONS = {
    CurlECode.COULDNT_RESOLVE_HOST: "the host name did not resolve",
    CurlECode.COULDNT_RESOLVE_PROXY: "the proxy's host name did not resolve",
    CurlECode.COULDNT_CONNECT: "failed to connect (connection refused or host unreachable)",
    CurlECode.OPERATION_TIMEDOUT: "the connection timed out",
    CurlECode.SSL_CONNECT_ERROR: "the TLS handshake failed",
    CurlECode.PEER_FAILED_VERIFICATION: "the TLS certificate did not verify",
    CurlECode.PROXY: "the proxy refused the tunnel",
    CurlECode.GOT_NOTHING: "the server closed the connection without answering",
    CurlECode.SEND_ERROR: "the connection broke while sending",
    CurlECode.RECV_ERROR: "the connection broke while receiving",
    CurlECode.PARTIAL_FILE: "the answer was cut short",
    CurlECode.HTTP2: "an HTTP/2 error",
    CurlECode.HTTP2_STREAM: "the HTTP/2 stream was reset",
}


def _reason_for(exc: RequestException) -> str:
    """What a curl_cffi failure was, in a few words of ours (no curl wording, no curl URL)."""
    code = getattr(exc, "code", None)
    reason = _REASONS.get(code) if code is not None else None
    if reason:
        return reason
    if isinstance(exc, SSLError):
        return "a TLS error"
    if isinstance(exc, ProxyError):
        return "a proxy error"
    return f"a network error (code {int(code)})" if code else "a network error"


def upstream_error(exc: RequestException, proxy: str = "") -> UpstreamUnavailable:
    """What a curl_cffi failure means for us; through `proxy`, the failures between us and
    the proxy (resolve, connect, tunnel, TLS handshake) are the proxy's. The message is ours;
    curl's own text stays in `detail`, for the log."""
    reason, detail = _reason_for(exc), str(exc)
    error: UpstreamUnavailable
    if proxy and _proxy_failure(exc):
        error = UpstreamProxyFailed(f"proxy {mask_proxy_url(proxy)} failed: {reason}", detail=detail)
    else:
        error = UpstreamUnavailable(f"could not reach Grok: {reason}", detail=detail)
    error.network_reason = reason
    return error


@contextmanager
def translate(proxy: str = "") -> Iterator[None]:
    """Turn every curl_cffi failure in the block into an `UpstreamUnavailable`, keeping the cause."""
    try:
        yield
    except RequestException as exc:
        raise upstream_error(exc, proxy) from exc


def mask_proxy_url(url: str) -> str:
    """`http://user:****@host:port`: a proxy URL fit for logs and messages (the password never shows)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, hostpart = rest.rpartition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:****@{hostpart}"
