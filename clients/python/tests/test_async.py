"""`AsyncHerald` against a real `herald serve`: every method awaited, the errors, and a minted
token accepted by an SSE stream read with httpx's async streaming. Each test runs its own event
loop (`asyncio.run`), so no pytest plugin is needed."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, AsyncIterator, Tuple

import httpx
import pytest
from conftest import WAIT_SECONDS, HeraldServer, free_port

from herald import (
    AsyncHerald,
    AuthenticationError,
    HeraldConnectionError,
    HeraldTimeoutError,
    InvalidRequestError,
    NotFoundError,
)


class AsyncSse:
    """`GET /v1/stream` over httpx.AsyncClient: `expect(event)` returns the next event's data."""

    def __init__(self, http: httpx.AsyncClient, url: str, token: str) -> None:
        self._http, self._url, self._token = http, url, token

    async def __aenter__(self) -> "AsyncSse":
        self._context = self._http.stream("GET", f"{self._url}/v1/stream", params={"token": self._token})
        self.response = await self._context.__aenter__()
        assert self.response.status_code == 200
        self._events = self._read()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._context.__aexit__(None, None, None)

    async def _read(self) -> AsyncIterator[Tuple[str, Any]]:
        event, data = "message", []
        async for line in self.response.aiter_lines():
            if line == "":
                if data:
                    yield event, json.loads("\n".join(data))
                event, data = "message", []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)

    async def expect(self, event: str) -> Any:
        got, data = await asyncio.wait_for(self._events.__anext__(), WAIT_SECONDS)
        assert got == event, f"expected {event}, got {got}: {data}"
        return data


def test_every_method_awaited(server: HeraldServer, user: str) -> None:
    async def scenario() -> None:
        async with AsyncHerald(server.url, server.api_key, server.secret) as herald, httpx.AsyncClient(
            timeout=WAIT_SECONDS
        ) as http:
            assert (await herald.health())["status"] == "ok"
            assert ((await herald.cluster())["bus"], (await herald.cluster())["peers"]) == ("local", [])
            async with AsyncSse(http, server.url, herald.mint_token(user, session="laptop", ttl=60)) as stream:
                hello = await stream.expect("hello")
                assert (hello["user"], hello["session"]) == (user, "laptop")
                client = hello["client"]

                receipt = await herald.notify(user=user, type="report.ready", data={"id": 7})
                assert receipt == {"notifications": [{"user": user, "seq": 1}], "delivered": 1}
                notification = await stream.expect("notification")
                assert (notification["seq"], notification["data"]) == (1, {"id": 7})

                batch = await herald.notify_batch(
                    [{"user": user, "type": "a"}, {"user": user, "session": "laptop", "type": "b", "durable": False}]
                )
                assert batch["failed"] == 0 and batch["results"][0]["notifications"] == [{"user": user, "seq": 2}]
                assert (await stream.expect("notification"))["type"] == "a"
                assert (await stream.expect("notification"))["type"] == "b"

                presence = await herald.presence(user)
                assert presence["sessions"][0]["clients"][0]["client"] == client

                # Topics of this test's own: the server is shared by the session's tests, and a
                # tab of another test may still listen to a common name such as "room:1".
                room_1, room_2, room_3 = (f"room:{user}-{n}" for n in (1, 2, 3))
                assert (await herald.listen(room_1, client=client))["topics"] == [room_1]
                assert (await herald.listen(room_2, user=user))["topics"] == [room_2]
                assert (await herald.listen(room_3, user=user, session="laptop"))["topics"] == [room_3]
                assert [c["client"] for c in (await herald.topic(room_1))["clients"]] == [client]
                await herald.notify(topic=room_1, type="line", data="hi", durable=False)
                assert (await stream.expect("topic"))["data"] == "hi"
                assert room_1 not in (await herald.unlisten(room_1, client=client))["topics"]
                assert (await herald.unlisten(room_2, user=user))["topics"] == []
                assert (await herald.unlisten(room_3, user=user, session="laptop"))["topics"] == []

                inbox = herald.inbox(user)
                assert (await inbox.counts())["unread"] == 2
                page = await inbox.list(status="unread", limit=1)
                assert [n["seq"] for n in page["notifications"]] == [2] and page["next_before"] == 2
                assert (await inbox.mark([2], "read", except_client=client))["changed"] == 1
                assert (await inbox.mark_all(2, "archived"))["counts"]["archived"] == 2
                assert (await inbox.delete(1))["counts"]["archived"] == 1
                assert (await inbox.delete_all(2))["counts"]["archived"] == 0
                # The tab was left out of the mark it made (except_client), not of the others.
                assert (await stream.expect("inbox"))["as"] == "archived"
                assert (await stream.expect("inbox"))["seqs"] == [1]
                assert (await stream.expect("inbox"))["all_up_to"] == 2

                assert [n["seq"] for n in await herald.notifications(user)] == []
                assert await herald.close_session(user, "laptop") == 1
                assert await stream.expect("closed") == {"reason": "session_closed"}
            assert await herald.close_all_sessions(user) == 0

    asyncio.run(scenario())


def test_errors(server: HeraldServer, user: str) -> None:
    async def scenario() -> None:
        async with AsyncHerald(server.url, "hk_wrong") as wrong_key:
            with pytest.raises(AuthenticationError) as refused:
                await wrong_key.notify(user=user)
            assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")
        async with AsyncHerald(server.url, server.api_key) as herald:
            with pytest.raises(NotFoundError) as refused:
                await herald.notify(client="aaaaaaaaaaaaaaaaaaaaaaaaaaa")
            assert refused.value.code == "client_not_found"
            with pytest.raises(InvalidRequestError) as refused:
                await herald.inbox(user).list(limit=0)
            assert refused.value.code == "invalid_limit"
            with pytest.raises(NotFoundError) as refused:
                await herald.job("no-such-job")
            assert refused.value.code == "job_not_found"
            with pytest.raises(ValueError):
                herald.mint_token(user)  # no secret
        # A socket that listens but never answers: the request ends with the timeout.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            async with AsyncHerald(f"http://127.0.0.1:{silent.getsockname()[1]}", "hk", timeout=0.5) as stalled:
                with pytest.raises(HeraldTimeoutError) as timed_out:
                    await asyncio.wait_for(stalled.notify(user=user), WAIT_SECONDS)
                assert (timed_out.value.status, timed_out.value.code) == (None, "timeout")
        async with AsyncHerald(f"http://127.0.0.1:{free_port()}", "hk") as nowhere:
            with pytest.raises(HeraldConnectionError):
                await nowhere.health()

    asyncio.run(scenario())
