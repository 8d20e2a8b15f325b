"""Web Push from the publisher, sync and async, against a real `herald serve` with a VAPID key
(`push_server`): a publish's push options reach the push (a `PushService` on 127.0.0.1 stands in
for the browser's push service) or get the server's refusal as a typed error, and a user's
subscriptions, registered as herald.js registers them (with a subscriber token), are listed and
removed with the API key."""

from __future__ import annotations

import asyncio

import pytest
from conftest import VAPID_PUBLIC_KEY, HeraldServer, PushService, subscribe_browser

from herald import AsyncHerald, Herald, InvalidRequestError, NotFoundError, PayloadTooLargeError

#: An id no subscription has (22 characters, as the server makes them).
UNKNOWN_ID = "q1w2e3r4t5y6u7i8o9p0aA"


@pytest.fixture
def herald(push_server: HeraldServer):
    with Herald(push_server.url, push_server.api_key, secret=push_server.secret) as client:
        yield client


def test_push_options_reach_the_push(herald: Herald, push_server: HeraldServer, push_service: PushService, user: str):
    # Fails if notify or a batch entry drops a push option or sends it under another name (the
    # server refuses unknown fields), or if the push carries other headers than asked.
    subscribe_browser(push_server.url, herald.mint_token(user, session="phone"), push_service.endpoint(user))

    receipt = herald.notify(user=user, type="order.paid", push="never", push_topic="never")
    assert receipt["notifications"] == [{"user": user, "seq": 1}]
    receipt = herald.notify(
        user=user,
        type="order.shipped",
        data={"order": 7},
        push="always",
        push_payload={"title": "Order 7 shipped"},
        push_ttl=60,
        push_urgency="high",
        push_topic="orders",
    )
    assert receipt["notifications"] == [{"user": user, "seq": 2}]
    [(path, headers)] = push_service.wait_for(1)
    assert path == f"/push/{user}"
    assert (headers["ttl"], headers["urgency"], headers["topic"]) == ("60", "high", "orders")
    assert headers["authorization"].endswith(f"k={VAPID_PUBLIC_KEY}")

    batch = herald.notify_batch(
        [
            {"user": user, "type": "a", "push": "always", "push_urgency": "low", "push_topic": "batch"},
            {"user": user, "type": "b", "push": "sometimes"},
        ]
    )
    assert batch["failed"] == 1 and batch["results"][0]["notifications"] == [{"user": user, "seq": 3}]
    assert (batch["results"][1]["error"]["status"], batch["results"][1]["error"]["code"]) == (400, "invalid_json")
    _, headers = push_service.wait_for(2)[1]
    assert (headers["urgency"], headers["topic"]) == ("low", "batch")
    # The `never` publish was pushed to nobody.
    assert [h["topic"] for _, h in push_service.received] == ["orders", "batch"]


@pytest.mark.parametrize(
    "options, error, status, code",
    [
        ({"push": "sometimes"}, InvalidRequestError, 400, "invalid_json"),
        ({"push_urgency": "urgent"}, InvalidRequestError, 400, "invalid_json"),
        ({"push_ttl": -1}, InvalidRequestError, 400, "invalid_json"),
        ({"push_topic": "not a topic!"}, InvalidRequestError, 400, "invalid_request"),
        ({"push_payload": "x" * 4000}, PayloadTooLargeError, 413, "push_payload_too_large"),
    ],
)
def test_a_push_option_the_server_refuses(herald: Herald, user: str, options, error, status, code):
    # The values are the server's to check: the client sends them as given, and the refusal is
    # the server's, typed. Fails if an option is not sent (the publish would succeed).
    with pytest.raises(error) as refused:
        herald.notify(user=user, type="t", **options)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert herald.notifications(user) == []


def test_push_subscriptions_listed_and_removed(
    herald: Herald, push_server: HeraldServer, push_service: PushService, user: str
):
    assert herald.push_subscriptions(user) == []
    with pytest.raises(NotFoundError) as refused:
        herald.remove_push_subscription(user, UNKNOWN_ID)
    assert (refused.value.status, refused.value.code) == (404, "no_such_subscription")

    laptop = subscribe_browser(push_server.url, herald.mint_token(user, session="laptop"), push_service.endpoint("l"))
    phone = subscribe_browser(push_server.url, herald.mint_token(user, session="phone"), push_service.endpoint("p"))
    listed = herald.push_subscriptions(user)
    assert [(s["id"], s["session"]) for s in listed] == [(laptop["id"], "laptop"), (phone["id"], "phone")]
    assert listed[0]["push_service"] == push_service.url  # the origin, never the endpoint
    assert listed[0]["created_at"] == laptop["created_at"]

    assert herald.remove_push_subscription(user, laptop["id"]) is None
    assert [s["id"] for s in herald.push_subscriptions(user)] == [phone["id"]]
    with pytest.raises(NotFoundError):
        herald.remove_push_subscription(user, laptop["id"])
    # What is left is what gets the pushes.
    herald.notify(user=user, push="always")
    [(path, _)] = push_service.wait_for(1)
    assert path == "/push/p"
    herald.remove_push_subscription(user, phone["id"])
    assert herald.push_subscriptions(user) == []


def test_vapid_public_key(herald: Herald, server: HeraldServer):
    assert herald.vapid_public_key() == VAPID_PUBLIC_KEY
    with Herald(server.url, server.api_key) as without_push:
        with pytest.raises(NotFoundError) as refused:
            without_push.vapid_public_key()
    assert (refused.value.status, refused.value.code) == (404, "push_not_configured")


def test_async(push_server: HeraldServer, push_service: PushService, server: HeraldServer, user: str):
    async def scenario() -> None:
        async with AsyncHerald(push_server.url, push_server.api_key, push_server.secret) as herald:
            assert await herald.vapid_public_key() == VAPID_PUBLIC_KEY
            assert await herald.push_subscriptions(user) == []
            subscribed = subscribe_browser(
                push_server.url, herald.mint_token(user, session="tablet"), push_service.endpoint("t")
            )
            listed = await herald.push_subscriptions(user)
            assert [(s["id"], s["session"]) for s in listed] == [(subscribed["id"], "tablet")]

            receipt = await herald.notify(
                user=user, push="always", push_payload={"title": "hi"}, push_ttl=5, push_urgency="very-low", push_topic="t1"
            )
            assert receipt["notifications"] == [{"user": user, "seq": 1}]
            [(_, headers)] = await asyncio.get_running_loop().run_in_executor(None, push_service.wait_for, 1)
            assert (headers["ttl"], headers["urgency"], headers["topic"]) == ("5", "very-low", "t1")
            batch = await herald.notify_batch([{"user": user, "push": "never"}, {"user": user, "push_ttl": -1}])
            assert [r.get("error", {}).get("code") for r in batch["results"]] == [None, "invalid_json"]
            with pytest.raises(InvalidRequestError) as refused:
                await herald.notify(user=user, push_urgency="urgent")
            assert (refused.value.status, refused.value.code) == (400, "invalid_json")

            assert await herald.remove_push_subscription(user, subscribed["id"]) is None
            with pytest.raises(NotFoundError) as not_found:
                await herald.remove_push_subscription(user, subscribed["id"])
            assert not_found.value.code == "no_such_subscription"
            assert await herald.push_subscriptions(user) == []
        async with AsyncHerald(server.url, server.api_key) as without_push:
            with pytest.raises(NotFoundError) as not_configured:
                await without_push.vapid_public_key()
            assert not_configured.value.code == "push_not_configured"

    asyncio.run(scenario())
