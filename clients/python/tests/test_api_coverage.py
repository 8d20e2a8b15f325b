"""Every route of the publisher API has a client method: each operation of docs/openapi.json
whose security is the API key is in CALLS (a call of `Herald` / `AsyncHerald` that sends it) or
in EXCLUDED (with the reason). Fails when a route with the API key is added to openapi.json and
no client method sends it: add the method to both clients, then its row here.

Each row is also called against an httpx.MockTransport that records the request, so a row cannot
name a method that sends another route. No server needed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from typing import Any, Callable, Dict, List, Set, Tuple

import httpx
import pytest
from conftest import ROOT

from herald import AsyncHerald, Herald

OPENAPI = ROOT / "docs" / "openapi.json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

Operation = Tuple[str, str]

#: Operation (method, path as openapi.json writes it) → a call that must send it. One lambda
#: drives both clients (`AsyncHerald`'s methods return awaitables). Routes without the API key
#: that the clients wrap (health, the VAPID key) are rows too, so that their paths are checked.
CALLS: Dict[Operation, Callable[[Any], Any]] = {
    ("POST", "/v1/notify"): lambda h: h.notify(user="u"),
    ("POST", "/v1/notify/batch"): lambda h: h.notify_batch([{"user": "u"}]),
    ("GET", "/v1/jobs/{id}"): lambda h: h.job("j"),
    ("GET", "/v1/users/{user}/presence"): lambda h: h.presence("u"),
    ("GET", "/v1/users/{user}/notifications"): lambda h: h.notifications("u"),
    ("DELETE", "/v1/users/{user}/sessions"): lambda h: h.close_all_sessions("u"),
    ("DELETE", "/v1/users/{user}/sessions/{session}"): lambda h: h.close_session("u", "s"),
    ("GET", "/v1/users/{user}/inbox"): lambda h: h.inbox("u").list(),
    ("DELETE", "/v1/users/{user}/inbox"): lambda h: h.inbox("u").delete_all(3),
    ("GET", "/v1/users/{user}/inbox/counts"): lambda h: h.inbox("u").counts(),
    ("POST", "/v1/users/{user}/inbox/mark"): lambda h: h.inbox("u").mark([1]),
    ("DELETE", "/v1/users/{user}/inbox/{seq}"): lambda h: h.inbox("u").delete(1),
    ("POST", "/v1/topics/listen"): lambda h: h.listen("t", user="u"),
    ("POST", "/v1/topics/unlisten"): lambda h: h.unlisten("t", user="u"),
    ("GET", "/v1/topics/{topic}"): lambda h: h.topic("t"),
    ("GET", "/v1/users/{user}/push-subscriptions"): lambda h: h.push_subscriptions("u"),
    ("DELETE", "/v1/users/{user}/push-subscriptions/{id}"): lambda h: h.remove_push_subscription("u", "i"),
    ("GET", "/v1/cluster"): lambda h: h.cluster(),
    ("GET", "/v1/push/vapid-public-key"): lambda h: h.vapid_public_key(),
    ("GET", "/healthz"): lambda h: h.health(),
}

#: API-key operations the clients deliberately leave out, each with the reason. Keep it short:
#: a publisher route belongs in the clients.
EXCLUDED: Dict[Operation, str] = {}


def load_spec() -> Dict[str, Any]:
    return dict(json.loads(OPENAPI.read_text()))


def operations(spec: Dict[str, Any]) -> Dict[Operation, Dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def api_key_operations(spec: Dict[str, Any]) -> Set[Operation]:
    """The operations whose security (their own, else the document's) names the `apiKey` scheme."""
    return {
        key
        for key, operation in operations(spec).items()
        if any("apiKey" in requirement for requirement in operation.get("security", spec.get("security", [])))
    }


def unwrapped(spec: Dict[str, Any]) -> List[Operation]:
    return sorted(api_key_operations(spec) - set(CALLS) - set(EXCLUDED))


def test_every_api_key_route_has_a_client_method() -> None:
    spec = load_spec()
    # A sanity bound (18 when written): fewer would mean the security was read wrongly.
    assert len(api_key_operations(spec)) >= 10, "openapi.json's API-key operations were not found"
    missing = unwrapped(spec)
    assert missing == [], (
        f"routes with the API key in docs/openapi.json that no client method sends: {missing}; "
        "add the method to Herald and AsyncHerald (and to clients/node), then its row to CALLS"
    )


def test_the_check_sees_a_route_added_to_the_description() -> None:
    # The check itself: a new API-key operation, or one inheriting the document's API-key
    # security, is reported; a route without the API key is not.
    spec = copy.deepcopy(load_spec())
    spec["paths"]["/v1/users/{user}/new-thing"] = {"get": {"security": [{"apiKey": []}]}, "post": {"security": []}}
    spec["paths"]["/v1/inherited"] = {"delete": {}}
    spec["security"] = [{"apiKey": []}]
    assert ("GET", "/v1/users/{user}/new-thing") in unwrapped(spec)
    assert ("DELETE", "/v1/inherited") in unwrapped(spec)
    assert ("POST", "/v1/users/{user}/new-thing") not in unwrapped(spec)


def test_the_table_names_routes_of_the_description() -> None:
    # A row for a route renamed or removed in openapi.json would hide the new one.
    described = operations(load_spec())
    stale = sorted(set(CALLS) - set(described)) + sorted(set(EXCLUDED) - set(described))
    assert stale == [], f"rows for operations openapi.json does not have: {stale}"
    assert all(reason.strip() for reason in EXCLUDED.values()), "each exclusion says why"
    assert not set(EXCLUDED) & set(CALLS), "an operation is either wrapped or excluded"


class Recorder:
    """An httpx.MockTransport handler: keeps each request's method and path, answers 200 with a
    body every method can read."""

    ANSWER = {"notifications": [], "closed": 0, "counts": {}, "subscriptions": [], "public_key": "k"}

    def __init__(self) -> None:
        self.sent: List[Tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.raw_path.decode().split("?")[0]))
        return httpx.Response(200, json=self.ANSWER)


def template(path: str) -> "re.Pattern[str]":
    """`/v1/users/{user}/inbox` → a regex matching it with any one segment per parameter."""
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts) + "$")


@pytest.mark.parametrize("operation", sorted(CALLS), ids=lambda op: f"{op[0]} {op[1]}")
def test_each_row_sends_its_route(operation: Operation) -> None:
    call = CALLS[operation]
    method, path = operation

    recorder = Recorder()
    with httpx.Client(transport=httpx.MockTransport(recorder)) as http:
        call(Herald("http://herald.test", "hk", http_client=http))
    assert len(recorder.sent) == 1 and recorder.sent[0][0] == method, recorder.sent
    assert template(path).match(recorder.sent[0][1]), f"Herald sent {recorder.sent[0]}, not {operation}"

    async def awaited() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
            await call(AsyncHerald("http://herald.test", "hk", http_client=http))

    recorder.sent.clear()
    asyncio.run(awaited())
    assert len(recorder.sent) == 1 and recorder.sent[0][0] == method, recorder.sent
    assert template(path).match(recorder.sent[0][1]), f"AsyncHerald sent {recorder.sent[0]}, not {operation}"
