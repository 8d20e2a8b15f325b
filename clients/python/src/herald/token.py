"""Subscriber tokens: the HS256 JWT a page presents to Herald (docs/PROTOCOL.md, Subscriber
authentication), minted with the standard library (`hmac`, `hashlib`, `base64`).

Claims: `sub` (the user), `sid` (the session, optional), `iat` (required by Herald: a sign-out
refuses the tokens issued at or before it), `exp`, `topics` (what the tab may listen to by
itself, optional), `aud` (only when the server has `--token-audience`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any, Dict, Optional, Sequence, Union

__all__ = ["mint_token", "TOKEN_TTL_MAX_DEFAULT", "TOKEN_TTL_DEFAULT"]

#: Herald's longest token lifetime by default (`--token-ttl-max`, 30 days): a longer one is
#: refused (401 `invalid_token`) when the page presents it, so `mint_token` refuses it at once.
TOKEN_TTL_MAX_DEFAULT = timedelta(days=30)

#: Lifetime of a token when none is given: 15 minutes. herald.js asks the page's token
#: function for a new one whenever it expires, so short lifetimes cost nothing.
TOKEN_TTL_DEFAULT = timedelta(minutes=15)

#: Longest user or session id Herald accepts, in bytes of UTF-8.
ID_BYTES_MAX = 128


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _check_id(what: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    size = len(value.encode("utf-8"))
    if not 1 <= size <= ID_BYTES_MAX:
        raise ValueError(f"{what} must be 1 to {ID_BYTES_MAX} bytes of UTF-8 (it is {size})")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} must not hold control characters")


def mint_token(
    secret: Union[str, bytes],
    user: str,
    session: Optional[str] = None,
    ttl: Union[int, float, timedelta] = TOKEN_TTL_DEFAULT,
    topics: Optional[Sequence[str]] = None,
    *,
    audience: Optional[str] = None,
    ttl_max: timedelta = TOKEN_TTL_MAX_DEFAULT,
    now: Optional[int] = None,
) -> str:
    """A subscriber token for `user` (and `session`), valid for `ttl` (seconds or a timedelta).

    `topics`: the token's `topics` claim, topic names and `prefix*` patterns its tabs may listen
    to by themselves (`["room:*"]`). `audience`: the server's `--token-audience`, if it has one.
    `ttl_max`: the server's `--token-ttl-max` (30 days by default): a longer `ttl` raises
    `ValueError` here rather than being refused by the server later. `now`: Unix seconds of
    `iat` (default: the clock now).

    Mint it after your own sign-in, for the signed-in user only. Use a stable session id of your
    own for `session`, not your session cookie's value (the page can read the token).
    """
    _check_id("user", user)
    if session is not None:
        _check_id("session", session)
    ttl_seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if ttl_seconds < 1:
        raise ValueError(f"ttl must be at least 1 second (got {ttl_seconds})")
    if ttl_seconds > ttl_max.total_seconds():
        raise ValueError(f"ttl of {ttl_seconds:.0f} s is longer than the server accepts ({ttl_max.total_seconds():.0f} s)")
    if isinstance(topics, str):
        raise TypeError("topics must be a list of topic names or patterns, not a str")
    issued_at = int(time.time()) if now is None else int(now)
    claims: Dict[str, Any] = {"sub": user, "iat": issued_at, "exp": issued_at + int(ttl_seconds)}
    if session is not None:
        claims["sid"] = session
    if topics is not None:
        claims["topics"] = list(topics)
    if audience is not None:
        claims["aud"] = audience
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    )
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)
