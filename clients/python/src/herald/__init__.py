"""Herald from a Python backend: publish notifications, mint subscriber tokens, read presence,
sign sessions out, manage a user's inbox, topic listens and Web Push subscriptions. Sync (`Herald`) or asyncio
(`AsyncHerald`); one dependency, httpx.

    from herald import Herald

    herald = Herald("http://127.0.0.1:7300", api_key=HERALD_API_KEY, secret=HERALD_SECRET)
    token = herald.mint_token("alice", session="laptop")   # for the page's herald.js
    herald.notify(user="alice", type="message.new", data={"text": "hi"})

# Layout
- `client`: `Herald`, `AsyncHerald` and their `Inbox` / `AsyncInbox`;
- `_requests`: every request of the publisher API, built once for both clients;
- `token`: `mint_token`, the HS256 subscriber token;
- `errors`: `HeraldError` and its subclasses, carrying the server's status and code;
- `types`: the answers' shapes as `TypedDict`s, and the values of a publish's `push` and
  `push_urgency`.
"""

from .client import TIMEOUT_SECONDS_DEFAULT, AsyncHerald, AsyncInbox, Herald, Inbox
from .errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    HeraldConnectionError,
    HeraldError,
    HeraldTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnavailableError,
)
from .token import TOKEN_TTL_DEFAULT, TOKEN_TTL_MAX_DEFAULT, mint_token

__version__ = "0.1.0"

__all__ = [
    "Herald",
    "AsyncHerald",
    "Inbox",
    "AsyncInbox",
    "mint_token",
    "TIMEOUT_SECONDS_DEFAULT",
    "TOKEN_TTL_DEFAULT",
    "TOKEN_TTL_MAX_DEFAULT",
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
