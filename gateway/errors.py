"""Errors the API shows to clients, in OpenAI's shape.

Service code raises one of these; `gateway.api` renders every one of them (and
ninja's own validation and auth errors) as
`{"error": {"message", "type", "param", "code"}}` with the right status.

    OpenAIError
     ├── InvalidRequest        400  bad JSON, failed validation, unsupported input
     ├── AuthenticationFailed  401  missing or wrong API key
     ├── NotFound              404  unknown route
     │    └── ModelNotFound    404  unknown model id
     ├── MethodNotAllowed      405
     ├── RateLimited           429  every usable account is cooling down (Retry-After)
     ├── UpstreamFailed        502  Grok answered garbage, or blocked us
     ├── ServiceUnavailable    503  no account can serve the model
     └── GatewayTimeout        504  Grok went silent past a timeout

Each error says whether retrying can help (`retryable`), as the `x-should-retry`
header the OpenAI SDKs obey: `false` stops their automatic retries of a 503 that
only an operator can fix; `true` comes with a `Retry-After`.
"""

from __future__ import annotations

import math

# Seconds a client should wait before retrying a transient failure that names no window of its own.
TRANSIENT_RETRY_AFTER = 1


class OpenAIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    retryable: bool | None = None  # None: say nothing, the client decides (an internal error)

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.headers = self._retry_headers() | (headers or {})

    def _retry_headers(self) -> dict[str, str]:
        if self.retryable is None:
            return {}
        if not self.retryable:
            return {"x-should-retry": "false"}
        return {"x-should-retry": "true", "Retry-After": str(TRANSIENT_RETRY_AFTER)}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(OpenAIError):
    status = 400
    retryable = False
    type = "invalid_request_error"


class AuthenticationFailed(OpenAIError):
    status = 401
    retryable = False
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(OpenAIError):
    status = 404
    retryable = False
    type = "invalid_request_error"
    code = "unknown_url"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist. GET /v1/models lists the models this gateway serves.",
            param="model",
        )


class MethodNotAllowed(OpenAIError):
    status = 405
    retryable = False
    type = "invalid_request_error"
    code = "method_not_allowed"


class RateLimited(OpenAIError):
    status = 429
    retryable = True
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(message, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


class UpstreamFailed(OpenAIError):
    """Final unless raised with `retryable=True` (Grok kept failing: another try later may pass)."""

    status = 502
    retryable = False
    type = "upstream_error"
    code = "upstream_error"


class ServiceUnavailable(OpenAIError):
    status = 503
    retryable = False
    type = "service_unavailable_error"
    code = "no_account_available"


class GatewayTimeout(OpenAIError):
    status = 504
    retryable = True
    type = "timeout_error"
    code = "upstream_timeout"
