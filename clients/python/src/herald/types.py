"""The shapes of Herald's answers, as `TypedDict`s (the clients return plain dicts parsed from
JSON; these only tell type checkers and readers what is in them). See docs/PROTOCOL.md."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Literal, Optional

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover - NotRequired needs 3.11; without it every key is simply documented
    from typing import TypedDict

    NotRequired = Optional  # type: ignore[assignment]

__all__ = [
    "Stored",
    "TopicStored",
    "Receipt",
    "BatchError",
    "BatchResult",
    "PresenceClient",
    "PresenceSession",
    "Presence",
    "Notification",
    "Counts",
    "InboxItem",
    "InboxPage",
    "InboxChange",
    "Listening",
    "Job",
    "PushPolicy",
    "PushUrgency",
    "PushSubscription",
    "Cluster",
]

#: A publish's `push`: `offline` (the default: a durable notification is pushed to each
#: subscription whose session has no live tab, after a 5 s grace), `always` (to every
#: subscription at once) or `never`.
PushPolicy = Literal["offline", "always", "never"]

#: A publish's `push_urgency`, the push's RFC 8030 `Urgency` header (default `normal`).
PushUrgency = Literal["very-low", "low", "normal", "high"]


class Stored(TypedDict):
    """A notification stored for a user: its seq in the user's log."""

    user: str
    seq: int


class TopicStored(TypedDict):
    topic: str
    tseq: int


class Receipt(TypedDict):
    """The answer to a publish: the seqs stored (none for an ephemeral one), how many clients
    this node handed it to, the topic's tseq for a durable topic publish, or, for an
    `inbox=True` topic publish with more than 10,000 followers, the background `job`."""

    notifications: NotRequired[List[Stored]]
    delivered: NotRequired[int]
    topic: NotRequired[TopicStored]
    job: NotRequired[str]


class BatchError(TypedDict):
    status: int
    code: str
    message: str


class BatchResult(TypedDict):
    """One result per entry, in order: a `Receipt`, or `{"error": BatchError}`; and how many failed."""

    results: List[Dict[str, Any]]
    failed: int


class PresenceClient(TypedDict):
    client: str
    transport: str
    connected_at: str
    last_seq: int
    node: str
    topics: List[str]


class PresenceSession(TypedDict):
    session: str
    clients: List[PresenceClient]


class Presence(TypedDict):
    user: str
    sessions: List[PresenceSession]


class Notification(TypedDict):
    seq: NotRequired[int]
    type: str
    data: Any
    created_at: str


class Counts(TypedDict):
    unread: int
    unseen: int
    total: int
    archived: int
    version: int


class InboxItem(Notification):
    seen_at: Optional[str]
    read_at: Optional[str]
    archived_at: Optional[str]


class InboxPage(TypedDict):
    notifications: List[InboxItem]
    next_before: Optional[int]
    counts: Counts


class InboxChange(TypedDict):
    """The `inbox` event of a change (also the answer to a mark or delete)."""

    op: str
    changed: NotRequired[int]
    counts: Counts


class Listening(TypedDict):
    """The answer to a listen or unlisten: the scope's topics after the change."""

    topics: List[str]
    client: NotRequired[str]
    user: NotRequired[str]
    session: NotRequired[str]
    positions: NotRequired[Dict[str, int]]


class Job(TypedDict):
    job: str
    topic: str
    stored: int
    done: bool
    created_at: str
    finished_at: Optional[str]


class PushSubscription(TypedDict):
    """One of a user's Web Push subscriptions, as listed: its `id` (for removing it), the
    session that registered it and its push service's origin (never the endpoint: whoever
    holds it can push to the browser)."""

    id: str
    session: str
    push_service: str
    created_at: str


class Cluster(TypedDict):
    """`GET /v1/cluster`: the node's view of its cluster and its bus traffic since it started
    (on a single node: `bus` `local`, no `peers`, the counts 0)."""

    node: str
    bus: str
    peers: List[str]
    subscribed_shards: int
    subscribed_topic_shards: int
    envelopes_out: int
    bytes_out: int
    envelopes_in: int
    bytes_in: int
    echoes: int
    rejected: int
    publish_failures: int
    repair_passes: int
    repaired: int
    reconnects: int
