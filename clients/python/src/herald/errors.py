"""Errors of the Herald client: one base class, `HeraldError`, and a subclass per kind of refusal.

Every refusal Herald answers is `{"error": {"code", "message"}}` with an HTTP status
(docs/PROTOCOL.md, Errors); the error raised carries all three, so code can branch on the class
(`except NotFoundError`) or on the server's exact `code` (`err.code == "client_not_found"`).
A request that got no answer at all (a timeout, a refused connection) raises
`HeraldTimeoutError` or `HeraldConnectionError`, whose `status` is `None`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "HeraldError",
    "InvalidRequestError",
    "AuthenticationError",
    "ForbiddenError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "UnavailableError",
    "HeraldTimeoutError",
    "HeraldConnectionError",
]


class HeraldError(Exception):
    """A request Herald refused (or that got no answer).

    - `status`: the HTTP status (`None` when no answer came);
    - `code`: the server's error code, such as `invalid_target` or `client_not_found`
      (`timeout` / `unreachable` for no answer, `invalid_response` for an answer
      that is not Herald's error JSON);
    - `message`: the server's message;
    - `retry_after`: seconds to wait before trying again, from `Retry-After` (429, 503).
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: str = "invalid_response",
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class InvalidRequestError(HeraldError):
    """400 (and 405, 408, 415, 431): the request is malformed: a bad target, unknown field, id or query."""


class AuthenticationError(HeraldError):
    """401: a missing or wrong API key (`missing_api_key`, `invalid_api_key`), or, on subscriber
    routes, a refused token (`invalid_token`, `token_expired`, `token_revoked`)."""


class ForbiddenError(HeraldError):
    """403: `topic_forbidden`, `forbidden_origin`, `forbidden`."""


class NotFoundError(HeraldError):
    """404: `client_not_found`, `job_not_found`, `not_found`."""


class ConflictError(HeraldError):
    """409: `too_many_topics`."""


class PayloadTooLargeError(HeraldError):
    """413: `data_too_large`, `publish_too_large`, `body_too_large`."""


class RateLimitedError(HeraldError):
    """429: `rate_limited`, `too_many_connections`; `retry_after` says when to try again."""


class UnavailableError(HeraldError):
    """503: `store_unavailable`, `bus_unavailable`, `too_many_jobs`, `overloaded`: try again later
    (with the same `idempotency_key`, so that a publish is stored once)."""


class HeraldTimeoutError(HeraldError):
    """No answer within the client's timeout. A publish may or may not have been stored: retry it
    with the same `idempotency_key`."""


class HeraldConnectionError(HeraldError):
    """Herald could not be reached (connection refused, DNS, TLS)."""


_BY_STATUS: Dict[int, Type[HeraldError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    405: InvalidRequestError,
    408: InvalidRequestError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: InvalidRequestError,
    429: RateLimitedError,
    431: InvalidRequestError,
    503: UnavailableError,
}


def error_from_answer(status: int, body: Any, retry_after_header: Optional[str]) -> HeraldError:
    """The error for a non-2xx answer: Herald's `{"error": {"code", "message"}}` when the body is
    that, else `invalid_response` with the status (a proxy's HTML page, say)."""
    code, message = "invalid_response", f"HTTP {status} without Herald's error JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
    retry_after: Optional[float] = None
    if retry_after_header is not None:
        try:
            retry_after = float(retry_after_header)
        except ValueError:
            retry_after = None
    cls = _BY_STATUS.get(status, HeraldError)
    return cls(message, status=status, code=code, retry_after=retry_after)
