"""Type-checked, never run: the library as an app uses it, for `mypy --strict`
(scripts/python-tests.sh). Each `# type: ignore[…]` marks a use that must be refused; with
--strict (warn_unused_ignores) the check fails if mypy stops refusing it."""

from __future__ import annotations

from datetime import timedelta
from typing import List, Optional

from herald import AsyncHerald, Herald, HeraldError, NotFoundError, mint_token
from herald.types import BatchResult, Cluster, Counts, InboxPage, Presence, PushSubscription, Receipt


def sync_app(herald: Herald) -> None:
    receipt: Receipt = herald.notify(user="alice", type="message.new", data={"text": "hi"}, idempotency_key="k")
    seqs: List[int] = [stored["seq"] for stored in receipt["notifications"]]
    herald.notify(users=["a", "b"], durable=False)
    herald.notify(topic="post:42", except_user="alice", inbox=True)
    herald.notify(
        user="alice",
        push="always",
        push_payload={"title": "hi"},
        push_ttl=60,
        push_urgency="very-low",
        push_topic="chat",
    )
    herald.notify_batch([{"user": "alice", "push": "never"}])
    subscriptions: List[PushSubscription] = herald.push_subscriptions("alice")
    herald.remove_push_subscription("alice", subscriptions[0]["id"])
    vapid_key: str = herald.vapid_public_key()
    cluster: Cluster = herald.cluster()
    peers: List[str] = cluster["peers"]
    batch: BatchResult = herald.notify_batch([{"user": "alice", "type": "a"}])
    failed: int = batch["failed"]
    token: str = herald.mint_token("alice", session="s1", ttl=timedelta(minutes=5), topics=["room:*"])
    presence: Presence = herald.presence("alice")
    transport: str = presence["sessions"][0]["clients"][0]["transport"]
    closed: int = herald.close_session("alice", "s1") + herald.close_all_sessions("alice")
    counts: Counts = herald.inbox("alice").counts()
    page: InboxPage = herald.inbox("alice").list(status="unread", limit=10)
    next_before: Optional[int] = page["next_before"]
    herald.inbox("alice").mark([1, 2], "read")
    herald.inbox("alice").mark_all(seqs[-1], "seen", except_client="c")
    herald.inbox("alice").delete(1)
    herald.inbox("alice").delete_all(2)
    herald.listen(["a", "b"], user="alice", session="s1")
    herald.unlisten("a", client="c")
    try:
        herald.job("j")
    except NotFoundError as error:
        code: str = error.code
        status: Optional[int] = error.status
    except HeraldError as error:
        retry_after: Optional[float] = error.retry_after
    print(seqs, failed, token, transport, closed, counts["unread"], next_before, vapid_key, peers)

    herald.notify("alice")  # type: ignore[call-arg]
    herald.presence(42)  # type: ignore[arg-type]
    bad: str = herald.close_session("alice", "s1")  # type: ignore[assignment]
    herald.notify(user="alice", push="sometimes")  # type: ignore[arg-type]
    herald.notify(user="alice", push_urgency="urgent")  # type: ignore[arg-type]
    herald.notify(user="alice", push_ttl="1 day")  # type: ignore[arg-type]


async def async_app(herald: AsyncHerald) -> None:
    receipt: Receipt = await herald.notify(user="alice", type="report.ready")
    counts: Counts = await herald.inbox("alice").counts()
    closed: int = await herald.close_all_sessions("alice")
    await herald.notify(user="alice", push="never", push_urgency="high")
    subscriptions: List[PushSubscription] = await herald.push_subscriptions("alice")
    await herald.remove_push_subscription("alice", subscriptions[0]["id"])
    vapid_key: str = await herald.vapid_public_key()
    cluster: Cluster = await herald.cluster()
    print(receipt, counts, closed, mint_token("secret", "alice", ttl=60), vapid_key, cluster["node"])
    not_awaited: Receipt = herald.notify(user="alice")  # type: ignore[assignment]
