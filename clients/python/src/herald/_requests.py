"""The publisher API's requests, built once for both clients: each function returns a `Request`
(method, path, query, JSON body) that `Herald` sends with httpx.Client and `AsyncHerald` with
httpx.AsyncClient. Bodies are those of docs/PROTOCOL.md; a keyword left `None` is left out of
the body, so the server's default applies.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence, Union
from urllib.parse import quote

from .types import PushPolicy, PushUrgency

#: The marks an inbox notification can be given (`"as"`); `mark_all` takes the first three.
MARKS = ("read", "seen", "archived", "unread", "unarchived")
MARKS_UP_TO = ("read", "seen", "archived")


class Request(NamedTuple):
    method: str
    path: str
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    headers: Optional[Dict[str, str]] = None


def segment(value: str) -> str:
    """A path segment: user, session, topic and job ids percent-encoded whole (`/` too)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"an id in a path must be a non-empty str, not {value!r}")
    return quote(value, safe="")


def notification_body(
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
) -> Dict[str, Any]:
    """The body of `POST /v1/notify` (and of one batch entry). Exactly one target: `user` (with
    `session` for one session of that user), `users`, `client` or `topic`. The `push…` keywords
    are sent as given: their values are the server's to check (400 `invalid_json` for an
    unknown `push` or `push_urgency`)."""
    targets = [name for name, value in (("user", user), ("users", users), ("client", client), ("topic", topic)) if value is not None]
    if len(targets) != 1:
        raise ValueError(f"give exactly one target of user, users, client, topic (got {targets or 'none'})")
    if session is not None and user is None:
        raise ValueError("session needs user: a session is one sign-in of a user")
    if isinstance(users, str):
        raise TypeError("users must be a list of user ids, not a str (use user= for one)")
    to: Dict[str, Any]
    if user is not None:
        to = {"user": user} if session is None else {"user": user, "session": session}
    elif users is not None:
        to = {"users": list(users)}
    elif client is not None:
        to = {"client": client}
    else:
        to = {"topic": topic}
    body: Dict[str, Any] = {"to": to}
    optional = {
        "type": type,
        "data": data,
        "durable": durable,
        "idempotency_key": idempotency_key,
        "except_client": except_client,
        "except_user": except_user,
        "inbox": inbox,
        "push": push,
        "push_payload": push_payload,
        "push_ttl": push_ttl,
        "push_urgency": push_urgency,
        "push_topic": push_topic,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def notify(**fields: Any) -> Request:
    return Request("POST", "/v1/notify", json=notification_body(**fields))


def notify_batch(entries: Iterable[Mapping[str, Any]]) -> Request:
    bodies = [notification_body(**dict(entry)) for entry in entries]
    return Request("POST", "/v1/notify/batch", json={"notifications": bodies})


def presence(user: str) -> Request:
    return Request("GET", f"/v1/users/{segment(user)}/presence")


def notifications(user: str, after: Optional[int], limit: Optional[int]) -> Request:
    params = {key: value for key, value in (("after", after), ("limit", limit)) if value is not None}
    return Request("GET", f"/v1/users/{segment(user)}/notifications", params=params)


def close_session(user: str, session: str) -> Request:
    return Request("DELETE", f"/v1/users/{segment(user)}/sessions/{segment(session)}")


def close_all_sessions(user: str) -> Request:
    return Request("DELETE", f"/v1/users/{segment(user)}/sessions")


def listen_body(
    topics: Union[str, Sequence[str]],
    client: Optional[str],
    user: Optional[str],
    session: Optional[str],
) -> Dict[str, Any]:
    """`POST /v1/topics/listen` and `/unlisten`: one scope, `client`, or `user` with `session`, or
    `user` alone."""
    names = [topics] if isinstance(topics, str) else list(topics)
    if (client is None) == (user is None):
        raise ValueError("give client= (one tab) or user= (with session= for one session), not both or neither")
    if session is not None and user is None:
        raise ValueError("session needs user")
    body: Dict[str, Any] = {"topics": names}
    if client is not None:
        body["client"] = client
    else:
        body["user"] = user
        if session is not None:
            body["session"] = session
    return body


def listen(topics: Union[str, Sequence[str]], client: Optional[str], user: Optional[str], session: Optional[str]) -> Request:
    return Request("POST", "/v1/topics/listen", json=listen_body(topics, client, user, session))


def unlisten(topics: Union[str, Sequence[str]], client: Optional[str], user: Optional[str], session: Optional[str]) -> Request:
    return Request("POST", "/v1/topics/unlisten", json=listen_body(topics, client, user, session))


def topic(name: str) -> Request:
    return Request("GET", f"/v1/topics/{segment(name)}")


def job(job_id: str) -> Request:
    return Request("GET", f"/v1/jobs/{segment(job_id)}")


def health() -> Request:
    return Request("GET", "/healthz")


def cluster() -> Request:
    return Request("GET", "/v1/cluster")


# Web Push: a user's subscriptions (the browser registers them itself, with its token), and the
# key pages subscribe with.


def push_subscriptions(user: str) -> Request:
    return Request("GET", f"/v1/users/{segment(user)}/push-subscriptions")


def remove_push_subscription(user: str, subscription_id: str) -> Request:
    return Request("DELETE", f"/v1/users/{segment(user)}/push-subscriptions/{segment(subscription_id)}")


def vapid_public_key() -> Request:
    return Request("GET", "/v1/push/vapid-public-key")


# The inbox of one user, with the API key: /v1/users/{user}/inbox…


def inbox_counts(user: str) -> Request:
    return Request("GET", f"/v1/users/{segment(user)}/inbox/counts")


def inbox_list(
    user: str,
    status: Optional[str],
    type: Optional[str],
    before: Optional[int],
    limit: Optional[int],
) -> Request:
    query = (("status", status), ("type", type), ("before", before), ("limit", limit))
    params = {key: value for key, value in query if value is not None}
    return Request("GET", f"/v1/users/{segment(user)}/inbox", params=params)


def _check_mark(mark: str, allowed: Sequence[str]) -> None:
    if mark not in allowed:
        raise ValueError(f"mark must be one of {', '.join(allowed)} (got {mark!r})")


def inbox_mark(user: str, seqs: Iterable[int], mark: str, except_client: Optional[str]) -> Request:
    _check_mark(mark, MARKS)
    return Request(
        "POST",
        f"/v1/users/{segment(user)}/inbox/mark",
        json={"seqs": list(seqs), "as": mark},
        headers=_except(except_client),
    )


def inbox_mark_all(user: str, up_to: int, mark: str, except_client: Optional[str]) -> Request:
    _check_mark(mark, MARKS_UP_TO)
    return Request(
        "POST",
        f"/v1/users/{segment(user)}/inbox/mark",
        json={"all_up_to": up_to, "as": mark},
        headers=_except(except_client),
    )


def inbox_delete(user: str, seq: int, except_client: Optional[str]) -> Request:
    return Request("DELETE", f"/v1/users/{segment(user)}/inbox/{int(seq)}", headers=_except(except_client))


def inbox_delete_all(user: str, up_to: int, except_client: Optional[str]) -> Request:
    return Request(
        "DELETE",
        f"/v1/users/{segment(user)}/inbox",
        params={"all_up_to": up_to},
        headers=_except(except_client),
    )


def _except(client: Optional[str]) -> Optional[Dict[str, str]]:
    """`X-Herald-Client`: the tab that made the change, left out of the `inbox` event."""
    return None if client is None else {"x-herald-client": client}
