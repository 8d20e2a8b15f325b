"""`Herald` (sync, httpx.Client) and `AsyncHerald` (asyncio, httpx.AsyncClient): the publisher
API with the API key, and subscriber tokens minted with the secret.

Both send the same requests (built in `_requests`) and read the answers the same way
(`_answer`): a 2xx answer's JSON is returned as a dict; anything else raises a `HeraldError`
subclass carrying the server's status and code. Every request has a timeout (10 s by default);
nothing is retried by the client (a publish may be retried safely by the caller with an
`idempotency_key`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union, cast

import httpx

from . import _requests as req
from .errors import HeraldConnectionError, HeraldError, HeraldTimeoutError, error_from_answer
from .token import TOKEN_TTL_DEFAULT, TOKEN_TTL_MAX_DEFAULT, mint_token
from .types import (
    BatchResult,
    Cluster,
    Counts,
    InboxChange,
    InboxPage,
    Job,
    Listening,
    Notification,
    Presence,
    PushPolicy,
    PushSubscription,
    PushUrgency,
    Receipt,
)

__all__ = ["Herald", "AsyncHerald", "Inbox", "AsyncInbox", "TIMEOUT_SECONDS_DEFAULT"]

#: How long one request may take by default (connect, send, wait for the answer): a publish
#: answers once stored, in milliseconds; 10 s means the server or the network is in trouble.
TIMEOUT_SECONDS_DEFAULT = 10.0

Topics = Union[str, Sequence[str]]


class _Base:
    """What both clients share: the credentials, and turning a `Request` into httpx arguments and
    an answer into a dict or an error."""

    def __init__(
        self,
        url: str,
        api_key: str,
        secret: Optional[Union[str, bytes]],
        audience: Optional[str],
        token_ttl_max: timedelta,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {url!r})")
        if not api_key:
            raise ValueError("api_key is required (HERALD_API_KEY)")
        self.url = url.rstrip("/")
        self._api_key = api_key
        self._secret = secret
        self._audience = audience
        self._token_ttl_max = token_ttl_max

    def _headers(self, request: req.Request) -> Dict[str, str]:
        headers = {"authorization": f"Bearer {self._api_key}", "accept": "application/json"}
        headers.update(request.headers or {})
        return headers

    def mint_token(
        self,
        user: str,
        session: Optional[str] = None,
        ttl: Union[int, float, timedelta] = TOKEN_TTL_DEFAULT,
        topics: Optional[Sequence[str]] = None,
    ) -> str:
        """A subscriber token for `user` (and `session`) valid for `ttl` (seconds or a timedelta,
        15 minutes by default), signed with the secret given to the client; `topics` is its
        `topics` claim (topics and `prefix*` patterns the tab may listen to by itself). Needs no
        request. See `herald.mint_token`."""
        if self._secret is None:
            raise ValueError("mint_token needs the secret: Herald(url, api_key, secret=HERALD_SECRET)")
        return mint_token(
            self._secret, user, session, ttl, topics, audience=self._audience, ttl_max=self._token_ttl_max
        )

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        if response.is_success:
            if body is None and response.content:
                raise HeraldError(
                    f"HTTP {response.status_code} with a body that is not JSON", status=response.status_code
                )
            return body
        raise error_from_answer(response.status_code, body, response.headers.get("retry-after"))


def _transport_error(error: httpx.TransportError, request: req.Request) -> HeraldError:
    what = f"{request.method} {request.path}"
    if isinstance(error, httpx.TimeoutException):
        return HeraldTimeoutError(f"{what}: no answer in time ({type(error).__name__})", code="timeout")
    return HeraldConnectionError(f"{what}: {error}", code="unreachable")


class Herald(_Base):
    """The publisher API of one Herald server, synchronous.

    >>> herald = Herald("http://127.0.0.1:7300", api_key=os.environ["HERALD_API_KEY"],
    ...                 secret=os.environ["HERALD_SECRET"])
    >>> herald.notify(user="alice", type="message.new", data={"text": "hi"})
    {'notifications': [{'user': 'alice', 'seq': 1}], 'delivered': 1}

    `timeout`: seconds for each request (default 10). `audience`: the server's
    `--token-audience`, if set. `token_ttl_max`: the server's `--token-ttl-max` (30 days).
    `http_client`: an httpx.Client of your own (its base URL and headers are not used).
    Make one and share it (between threads too: httpx.Client can be); use it as a context
    manager, or call `close()`, to close its connections.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        secret: Optional[Union[str, bytes]] = None,
        *,
        timeout: float = TIMEOUT_SECONDS_DEFAULT,
        audience: Optional[str] = None,
        token_ttl_max: timedelta = TOKEN_TTL_MAX_DEFAULT,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(url, api_key, secret, audience, token_ttl_max)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self._timeout = timeout

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "Herald":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, request: req.Request) -> Any:
        try:
            response = self._http.request(
                request.method,
                self.url + request.path,
                params=request.params,
                json=request.json,
                headers=self._headers(request),
                timeout=self._timeout,
            )
        except httpx.TransportError as error:
            raise _transport_error(error, request) from error
        return self._answer(response)

    def notify(
        self,
        *,
        user: Optional[str] = None,
        session: Optional[str] = None,
        client: Optional[str] = None,
        users: Optional[Sequence[str]] = None,
        topic: Optional[str] = None,
        type: Optional[str] = None,
        data: Any = None,
        durable: Optional[bool] = None,
        idempotency_key: Optional[str] = None,
        except_client: Optional[str] = None,
        except_user: Optional[str] = None,
        inbox: Optional[bool] = None,
        push: Optional[PushPolicy] = None,
        push_payload: Any = None,
        push_ttl: Optional[int] = None,
        push_urgency: Optional[PushUrgency] = None,
        push_topic: Optional[str] = None,
    ) -> Receipt:
        """Publishes one notification (`POST /v1/notify`) to exactly one target: `user` (with
        `session`: that session only), `users` (1 to 1,000), `client` (one tab) or `topic`.
        `type` defaults to `"notification"`, `durable` to True (stored with a seq before this
        returns); `idempotency_key`: a repeat within 24 hours gets the first receipt and stores
        nothing; `except_client`: the tab that caused it; `except_user` (topics): a user none of
        whose tabs get it; `inbox=True` (topics): one stored notification per follower.

        Web Push (a server with a VAPID key, users whose browsers subscribed): `push` is
        `"offline"` (default: a durable notification is pushed to each subscription whose
        session has no live tab, after a 5 s grace), `"always"` (every subscription, at once) or
        `"never"`; `push_payload` what the push carries instead of `data` (at most about 3,800
        bytes: 413 `push_payload_too_large`); `push_ttl` its `TTL` in seconds (default one day);
        `push_urgency` `"very-low"`, `"low"`, `"normal"` or `"high"`; `push_topic` its collapse
        key (1 to 32 of A-Z a-z 0-9 - _; default made from `type`)."""
        return cast(Receipt, self._send(req.notify(**_fields(locals()))))

    def notify_batch(self, notifications: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Publishes 1 to 1,000 notifications in one request (`POST /v1/notify/batch`), each a
        mapping of `notify`'s keywords (`{"user": "alice", "type": …, "data": …}`). A user's
        entries get their seqs in batch order. Returns one result per entry, in order: a receipt
        or `{"error": {"status", "code", "message"}}` (an entry fails alone), and `failed`."""
        return cast(BatchResult, self._send(req.notify_batch(notifications)))

    def presence(self, user: str) -> Presence:
        """The user's sessions and their connected clients (tabs), on every node."""
        return cast(Presence, self._send(req.presence(user)))

    def notifications(self, user: str, after: Optional[int] = None, limit: Optional[int] = None) -> List[Notification]:
        """The user's stored notifications after seq `after` (default 0), oldest first, at most
        `limit` (1 to 100, default 100)."""
        return cast(List[Notification], self._send(req.notifications(user, after, limit))["notifications"])

    def close_session(self, user: str, session: str) -> int:
        """Signs the session out: closes its clients (`session_closed`) and refuses every token of
        it issued until now. Returns how many connections were closed."""
        return int(self._send(req.close_session(user, session))["closed"])

    def close_all_sessions(self, user: str) -> int:
        """Signs the user out everywhere: every session, as `close_session`."""
        return int(self._send(req.close_all_sessions(user))["closed"])

    def listen(
        self, topics: Topics, *, client: Optional[str] = None, user: Optional[str] = None, session: Optional[str] = None
    ) -> Listening:
        """Makes a tab (`client`), a session (`user` and `session`) or a user (`user`: every tab,
        now and later) listen to `topics`, whatever its token allows. Returns the scope's topics."""
        return cast(Listening, self._send(req.listen(topics, client, user, session)))

    def unlisten(
        self, topics: Topics, *, client: Optional[str] = None, user: Optional[str] = None, session: Optional[str] = None
    ) -> Listening:
        """Stops a tab, a session or a user listening to `topics` at that scope."""
        return cast(Listening, self._send(req.unlisten(topics, client, user, session)))

    def topic(self, topic: str) -> Dict[str, Any]:
        """Who listens to `topic`: `users`, `sessions`, connected `clients`, `truncated`."""
        return cast(Dict[str, Any], self._send(req.topic(topic)))

    def job(self, job_id: str) -> Job:
        """The progress of a background fan-out job (an `inbox=True` topic publish answered `job`)."""
        return cast(Job, self._send(req.job(job_id)))

    def health(self) -> Dict[str, Any]:
        """`GET /healthz`: `status` (`ok` or `degraded`), `node`, `store`, `bus`."""
        return cast(Dict[str, Any], self._send(req.health()))

    def cluster(self) -> Cluster:
        """`GET /v1/cluster`: this node's view of its cluster (peers, shards, bus traffic)."""
        return cast(Cluster, self._send(req.cluster()))

    def push_subscriptions(self, user: str) -> List[PushSubscription]:
        """The user's Web Push subscriptions, oldest first (each browser registers its own with
        herald.js's `herald.push.subscribe()`)."""
        return cast(List[PushSubscription], self._send(req.push_subscriptions(user))["subscriptions"])

    def remove_push_subscription(self, user: str, subscription_id: str) -> None:
        """Removes one of the user's push subscriptions by the `id` listed; an id the user does
        not have raises `NotFoundError` (`no_such_subscription`)."""
        self._send(req.remove_push_subscription(user, subscription_id))

    def vapid_public_key(self) -> str:
        """The server's VAPID public key (what a page gives `pushManager.subscribe`); a server
        without one raises `NotFoundError` (`push_not_configured`)."""
        return str(self._send(req.vapid_public_key())["public_key"])

    def inbox(self, user: str) -> "Inbox":
        """The inbox of `user` (counts, pages, marks, deletions), with the API key."""
        return Inbox(self, user)


class Inbox:
    """One user's inbox, through the publisher API (`/v1/users/{user}/inbox…`). Each change
    answers its `inbox` event (`op`, `changed`, `counts`), which the user's tabs get too (but
    `except_client`, the tab that made the change)."""

    def __init__(self, herald: Herald, user: str) -> None:
        self._herald = herald
        self.user = user

    def counts(self) -> Counts:
        return cast(Counts, self._herald._send(req.inbox_counts(self.user))["counts"])

    def list(
        self,
        *,
        status: Optional[str] = None,
        type: Optional[str] = None,
        before: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> InboxPage:
        """A page, newest first: `status` is `all` (default), `unread`, `unseen`, `read` or
        `archived`; `before` the previous page's `next_before`; `limit` 1 to 100 (20)."""
        return cast(InboxPage, self._herald._send(req.inbox_list(self.user, status, type, before, limit)))

    def mark(self, seqs: Iterable[int], mark: str = "read", *, except_client: Optional[str] = None) -> InboxChange:
        """Marks 1 to 1,000 notifications `read`, `unread`, `seen`, `archived` or `unarchived`."""
        return cast(InboxChange, self._herald._send(req.inbox_mark(self.user, seqs, mark, except_client)))

    def mark_all(self, up_to: int, mark: str = "read", *, except_client: Optional[str] = None) -> InboxChange:
        """Marks every notification up to seq `up_to` `read`, `seen` or `archived` ("mark all read")."""
        return cast(InboxChange, self._herald._send(req.inbox_mark_all(self.user, up_to, mark, except_client)))

    def delete(self, seq: int, *, except_client: Optional[str] = None) -> InboxChange:
        """Deletes one notification (a seq not stored: `changed` 0, no error)."""
        return cast(InboxChange, self._herald._send(req.inbox_delete(self.user, seq, except_client)))

    def delete_all(self, up_to: int, *, except_client: Optional[str] = None) -> InboxChange:
        """Deletes every notification up to seq `up_to`."""
        return cast(InboxChange, self._herald._send(req.inbox_delete_all(self.user, up_to, except_client)))


class AsyncHerald(_Base):
    """The publisher API of one Herald server, for asyncio: the methods of `Herald`, awaited.

    >>> async with AsyncHerald(url, api_key, secret) as herald:
    ...     await herald.notify(user="alice", type="report.ready", data={"id": 7})
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        secret: Optional[Union[str, bytes]] = None,
        *,
        timeout: float = TIMEOUT_SECONDS_DEFAULT,
        audience: Optional[str] = None,
        token_ttl_max: timedelta = TOKEN_TTL_MAX_DEFAULT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, api_key, secret, audience, token_ttl_max)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncHerald":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, request: req.Request) -> Any:
        try:
            response = await self._http.request(
                request.method,
                self.url + request.path,
                params=request.params,
                json=request.json,
                headers=self._headers(request),
                timeout=self._timeout,
            )
        except httpx.TransportError as error:
            raise _transport_error(error, request) from error
        return self._answer(response)

    async def notify(
        self,
        *,
        user: Optional[str] = None,
        session: Optional[str] = None,
        client: Optional[str] = None,
        users: Optional[Sequence[str]] = None,
        topic: Optional[str] = None,
        type: Optional[str] = None,
        data: Any = None,
        durable: Optional[bool] = None,
        idempotency_key: Optional[str] = None,
        except_client: Optional[str] = None,
        except_user: Optional[str] = None,
        inbox: Optional[bool] = None,
        push: Optional[PushPolicy] = None,
        push_payload: Any = None,
        push_ttl: Optional[int] = None,
        push_urgency: Optional[PushUrgency] = None,
        push_topic: Optional[str] = None,
    ) -> Receipt:
        """See `Herald.notify`."""
        return cast(Receipt, await self._send(req.notify(**_fields(locals()))))

    async def notify_batch(self, notifications: Iterable[Mapping[str, Any]]) -> BatchResult:
        """See `Herald.notify_batch`."""
        return cast(BatchResult, await self._send(req.notify_batch(notifications)))

    async def presence(self, user: str) -> Presence:
        return cast(Presence, await self._send(req.presence(user)))

    async def notifications(
        self, user: str, after: Optional[int] = None, limit: Optional[int] = None
    ) -> List[Notification]:
        return cast(List[Notification], (await self._send(req.notifications(user, after, limit)))["notifications"])

    async def close_session(self, user: str, session: str) -> int:
        return int((await self._send(req.close_session(user, session)))["closed"])

    async def close_all_sessions(self, user: str) -> int:
        return int((await self._send(req.close_all_sessions(user)))["closed"])

    async def listen(
        self, topics: Topics, *, client: Optional[str] = None, user: Optional[str] = None, session: Optional[str] = None
    ) -> Listening:
        return cast(Listening, await self._send(req.listen(topics, client, user, session)))

    async def unlisten(
        self, topics: Topics, *, client: Optional[str] = None, user: Optional[str] = None, session: Optional[str] = None
    ) -> Listening:
        return cast(Listening, await self._send(req.unlisten(topics, client, user, session)))

    async def topic(self, topic: str) -> Dict[str, Any]:
        return cast(Dict[str, Any], await self._send(req.topic(topic)))

    async def job(self, job_id: str) -> Job:
        return cast(Job, await self._send(req.job(job_id)))

    async def health(self) -> Dict[str, Any]:
        return cast(Dict[str, Any], await self._send(req.health()))

    async def cluster(self) -> Cluster:
        return cast(Cluster, await self._send(req.cluster()))

    async def push_subscriptions(self, user: str) -> List[PushSubscription]:
        return cast(List[PushSubscription], (await self._send(req.push_subscriptions(user)))["subscriptions"])

    async def remove_push_subscription(self, user: str, subscription_id: str) -> None:
        await self._send(req.remove_push_subscription(user, subscription_id))

    async def vapid_public_key(self) -> str:
        return str((await self._send(req.vapid_public_key()))["public_key"])

    def inbox(self, user: str) -> "AsyncInbox":
        return AsyncInbox(self, user)


class AsyncInbox:
    """One user's inbox, for asyncio: the methods of `Inbox`, awaited."""

    def __init__(self, herald: AsyncHerald, user: str) -> None:
        self._herald = herald
        self.user = user

    async def counts(self) -> Counts:
        return cast(Counts, (await self._herald._send(req.inbox_counts(self.user)))["counts"])

    async def list(
        self,
        *,
        status: Optional[str] = None,
        type: Optional[str] = None,
        before: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> InboxPage:
        return cast(InboxPage, await self._herald._send(req.inbox_list(self.user, status, type, before, limit)))

    async def mark(self, seqs: Iterable[int], mark: str = "read", *, except_client: Optional[str] = None) -> InboxChange:
        return cast(InboxChange, await self._herald._send(req.inbox_mark(self.user, seqs, mark, except_client)))

    async def mark_all(self, up_to: int, mark: str = "read", *, except_client: Optional[str] = None) -> InboxChange:
        return cast(InboxChange, await self._herald._send(req.inbox_mark_all(self.user, up_to, mark, except_client)))

    async def delete(self, seq: int, *, except_client: Optional[str] = None) -> InboxChange:
        return cast(InboxChange, await self._herald._send(req.inbox_delete(self.user, seq, except_client)))

    async def delete_all(self, up_to: int, *, except_client: Optional[str] = None) -> InboxChange:
        return cast(InboxChange, await self._herald._send(req.inbox_delete_all(self.user, up_to, except_client)))


def _fields(arguments: Dict[str, Any]) -> Dict[str, Any]:
    """`notify`'s keywords from its `locals()`, without `self`."""
    return {key: value for key, value in arguments.items() if key != "self"}
