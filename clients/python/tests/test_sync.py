"""`Herald` (sync) against a real `herald serve`: every method, the errors, and a token minted
by the library accepted by a real SSE stream that then receives what the library published."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from conftest import HeraldServer, free_port

from herald import (
    AuthenticationError,
    ConflictError,
    Herald,
    HeraldConnectionError,
    HeraldError,
    HeraldTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    mint_token,
)


@pytest.fixture
def herald(server: HeraldServer):
    with Herald(server.url, server.api_key, secret=server.secret) as client:
        yield client


def test_minted_token_opens_a_stream_that_receives_the_published_notification(herald, sse, user):
    # Fails if the token's claims or signature are not what the server checks, or if notify's
    # body or receipt differ from PROTOCOL.md's.
    stream = sse(herald.mint_token(user, session="laptop", ttl=60))
    assert stream.response.status_code == 200
    hello = stream.expect("hello")
    assert (hello["user"], hello["session"], hello["last_seq"]) == (user, "laptop", 0)

    receipt = herald.notify(user=user, type="message.new", data={"text": "hi", "n": [1, 2]})
    assert receipt == {"notifications": [{"user": user, "seq": 1}], "delivered": 1}

    notification = stream.expect("notification")
    assert notification["seq"] == 1
    assert notification["type"] == "message.new"
    assert notification["data"] == {"text": "hi", "n": [1, 2]}

    # Ephemeral: no seq, not stored; the default type.
    receipt = herald.notify(user=user, data="typing", durable=False)
    assert receipt["notifications"] == [] and receipt["delivered"] == 1
    ephemeral = stream.expect("notification")
    assert "seq" not in ephemeral and ephemeral["type"] == "notification" and ephemeral["data"] == "typing"
    assert [n["seq"] for n in herald.notifications(user)] == [1]


def test_token_without_session_and_with_topics(herald, sse, user):
    room = f"room:{user}"  # the test's own: the server and its topics are shared by the session's tests
    stream = sse(herald.mint_token(user, topics=["room:*"]), topics=room)
    hello = stream.expect("hello")
    assert hello["session"].startswith("t-")  # derived from the token
    assert hello["topics"] == [room]
    herald.notify(topic=room, type="line", data={"text": "hello room"})
    event = stream.expect("topic")
    assert (event["topic"], event["tseq"], event["data"]) == (room, 1, {"text": "hello room"})


def test_token_rules(server, herald, user):
    with pytest.raises(ValueError, match="longer than the server accepts"):
        herald.mint_token(user, ttl=31 * 24 * 3600)
    with pytest.raises(ValueError):
        herald.mint_token("", ttl=60)
    with pytest.raises(ValueError, match="needs the secret"):
        Herald(server.url, server.api_key).mint_token(user)
    # Expired, by the server's rule (no leeway).
    expired = mint_token(server.secret, user, ttl=10, now=int(time.time()) - 100)
    answer = httpx.get(f"{server.url}/v1/inbox/counts", params={"token": expired})
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "token_expired")
    # Signed with another secret.
    forged = mint_token("another-secret-" + "x" * 32, user)
    answer = httpx.get(f"{server.url}/v1/inbox/counts", params={"token": forged})
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "invalid_token")
    # An `aud` on a server without --token-audience is refused.
    with_audience = mint_token(server.secret, user, audience="app")
    assert httpx.get(f"{server.url}/v1/inbox/counts", params={"token": with_audience}).status_code == 401


def test_token_audience():
    audience_server = HeraldServer(env={"HERALD_TOKEN_AUDIENCE": "https://app.example"})
    try:
        with_audience = Herald(
            audience_server.url, audience_server.api_key, audience_server.secret, audience="https://app.example"
        )
        without = Herald(audience_server.url, audience_server.api_key, audience_server.secret)
        url = f"{audience_server.url}/v1/inbox/counts"
        assert httpx.get(url, params={"token": with_audience.mint_token("alice")}).status_code == 200
        assert httpx.get(url, params={"token": without.mint_token("alice")}).status_code == 401
    finally:
        audience_server.stop()


def test_targets(herald, sse, user):
    other = user + "-b"
    laptop = sse(herald.mint_token(user, session="laptop"))
    phone = sse(herald.mint_token(user, session="phone"))
    laptop_client = laptop.expect("hello")["client"]
    phone.expect("hello")

    # One session: the phone does not get it (its next event is the following publish).
    assert herald.notify(user=user, session="laptop", type="only.laptop")["notifications"][0]["seq"] == 1
    assert laptop.expect("notification")["type"] == "only.laptop"
    # One client, except_client.
    herald.notify(client=laptop_client, type="only.tab")
    assert laptop.expect("notification")["type"] == "only.tab"
    herald.notify(user=user, type="not.laptop", except_client=laptop_client)
    assert phone.expect("notification")["type"] == "not.laptop"
    # Several users.
    receipt = herald.notify(users=[user, other], type="everyone")
    assert sorted(n["user"] for n in receipt["notifications"]) == sorted([user, other])
    assert laptop.expect("notification")["type"] == "everyone"
    assert phone.expect("notification")["type"] == "everyone"

    with pytest.raises(ValueError, match="exactly one target"):
        herald.notify(user=user, client=laptop_client)
    with pytest.raises(ValueError, match="exactly one target"):
        herald.notify(type="nobody")
    with pytest.raises(TypeError):
        herald.notify(users=user)


def test_idempotency_key(herald, user):
    first = herald.notify(user=user, type="order.paid", idempotency_key="order-1")
    again = herald.notify(user=user, type="order.paid", idempotency_key="order-1")
    assert again["notifications"] == first["notifications"]
    assert len(herald.notifications(user)) == 1


def test_notify_batch(herald, user):
    result = herald.notify_batch(
        [
            {"user": user, "type": "a", "data": 1},
            {"user": user, "type": "b", "data": 2, "idempotency_key": "k-b"},
            {"client": "nobody-has-this-client-id-x", "type": "c"},
        ]
    )
    assert result["failed"] == 1
    assert [r["notifications"] for r in result["results"][:2]] == [
        [{"user": user, "seq": 1}],
        [{"user": user, "seq": 2}],
    ]
    assert result["results"][2]["error"]["code"] in ("client_not_found", "invalid_id")
    assert [n["type"] for n in herald.notifications(user)] == ["a", "b"]
    assert [n["seq"] for n in herald.notifications(user, after=1, limit=1)] == [2]
    with pytest.raises(InvalidRequestError) as refused:
        herald.notify_batch([])
    assert refused.value.code == "invalid_batch"


def test_presence_and_close_all_sessions(herald, sse, server, user):
    laptop_token = herald.mint_token(user, session="laptop")
    laptop = sse(laptop_token)
    client = laptop.expect("hello")["client"]
    phone = sse(herald.mint_token(user, session="phone"))
    phone.expect("hello")

    presence = herald.presence(user)
    assert presence["user"] == user
    sessions = {s["session"]: s["clients"] for s in presence["sessions"]}
    assert set(sessions) == {"laptop", "phone"}
    assert sessions["laptop"][0]["client"] == client and sessions["laptop"][0]["transport"] == "sse"

    assert herald.close_session(user, "laptop") == 1
    assert laptop.expect("closed") == {"reason": "session_closed"}
    # The token issued before the close is refused from now on.
    answer = httpx.get(f"{server.url}/v1/stream", params={"token": laptop_token})
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "token_revoked")

    assert herald.close_all_sessions(user) == 1
    assert phone.expect("closed") == {"reason": "session_closed"}
    assert herald.presence(user)["sessions"] == []
    # Ids are percent-encoded whole: a `/` in a user id stays in its segment.
    assert herald.presence("team/alice")["user"] == "team/alice"


def test_inbox(herald, user):
    for n in range(3):
        herald.notify(user=user, type="invoice" if n == 1 else "message", data={"n": n})
    inbox = herald.inbox(user)
    counts = inbox.counts()
    assert (counts["unread"], counts["unseen"], counts["total"], counts["archived"]) == (3, 3, 3, 0)

    page = inbox.list(limit=2)
    assert [n["seq"] for n in page["notifications"]] == [3, 2] and page["next_before"] == 2
    assert [n["seq"] for n in inbox.list(before=page["next_before"])["notifications"]] == [1]
    assert [n["seq"] for n in inbox.list(type="invoice")["notifications"]] == [2]

    change = inbox.mark([1], "read")
    assert (change["op"], change["as"], change["changed"], change["counts"]["unread"]) == ("mark", "read", 1, 2)
    assert [n["seq"] for n in inbox.list(status="read")["notifications"]] == [1]
    assert inbox.mark_all(3, "seen")["counts"]["unseen"] == 0
    assert inbox.mark([2], "archived")["counts"]["archived"] == 1
    assert inbox.mark([2], "unarchived")["counts"]["archived"] == 0
    assert inbox.delete(2)["counts"]["total"] == 2
    assert inbox.delete(2)["changed"] == 0  # retrying a deletion is safe
    change = inbox.delete_all(3)
    assert (change["op"], change["counts"]["total"]) == ("delete", 0)

    with pytest.raises(ValueError):
        inbox.mark([1], "done")
    with pytest.raises(ValueError):
        inbox.mark_all(3, "unread")  # unread and unarchived take seqs only
    with pytest.raises(InvalidRequestError) as refused:
        inbox.list(status="everything")
    assert refused.value.code == "invalid_status"


def test_listen_and_unlisten(herald, sse, user):
    stream = sse(herald.mint_token(user, session="s1"))
    client = stream.expect("hello")["client"]

    listening = herald.listen("post:42", client=client)
    assert listening["client"] == client and listening["topics"] == ["post:42"]
    by_user = herald.listen(["post:1", "post:2"], user=user)
    assert (by_user["user"], by_user["topics"]) == (user, ["post:1", "post:2"])
    assert herald.listen("post:9", user=user, session="s1")["session"] == "s1"

    who = herald.topic("post:1")
    assert who["users"] == [user]
    assert [c["client"] for c in herald.topic("post:42")["clients"]] == [client]

    herald.notify(topic="post:42", type="comment", data={"text": "first"}, except_user=user + "-author")
    event = stream.expect("topic")
    assert (event["topic"], event["type"]) == ("post:42", "comment")

    assert herald.unlisten("post:42", client=client)["topics"] == ["post:1", "post:2", "post:9"]
    assert herald.unlisten(["post:1", "post:2"], user=user)["topics"] == []
    assert herald.unlisten("post:9", user=user, session="s1")["topics"] == []

    with pytest.raises(ValueError):
        herald.listen("post:1")
    with pytest.raises(ValueError):
        herald.listen("post:1", client=client, user=user)
    with pytest.raises(ConflictError) as refused:
        herald.listen([f"t:{n}" for n in range(101)], user=user)
    assert (refused.value.status, refused.value.code) == (409, "too_many_topics")


def test_topic_inbox_publish_to_followers(herald, user):
    herald.listen("post:7", user=user)
    receipt = herald.notify(topic="post:7", inbox=True, type="comment", data={"text": "x"})
    assert receipt["notifications"] == [{"user": user, "seq": 1}]
    assert herald.inbox(user).counts()["unread"] == 1


def test_errors_carry_the_servers_status_and_code(server, herald, user):
    with pytest.raises(AuthenticationError) as refused:
        Herald(server.url, "hk_wrong").notify(user=user)
    assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")
    assert refused.value.message

    with pytest.raises(NotFoundError) as refused:
        herald.notify(client="aaaaaaaaaaaaaaaaaaaaaaaaaaa", type="x")
    assert (refused.value.status, refused.value.code) == (404, "client_not_found")

    with pytest.raises(NotFoundError) as refused:
        herald.job("no-such-job")
    assert refused.value.code == "job_not_found"

    with pytest.raises(PayloadTooLargeError) as refused:
        herald.notify(user=user, data="x" * 70_000)
    assert (refused.value.status, refused.value.code) == (413, "data_too_large")

    with pytest.raises(InvalidRequestError) as refused:
        herald.notify(user=user, type="t" * 200)
    assert refused.value.status == 400

    with pytest.raises(InvalidRequestError) as refused:
        herald.notify(user=user, except_user="bob")
    assert refused.value.code == "invalid_target"

    with pytest.raises(InvalidRequestError) as refused:
        herald.notifications(user, limit=1000)
    assert refused.value.code == "invalid_limit"
    assert isinstance(refused.value, HeraldError)
    assert str(refused.value).startswith("400 invalid_limit: ")

    # Nothing was stored by any of them.
    assert herald.notifications(user) == []
    assert herald.health()["status"] == "ok"


def test_cluster(herald, server):
    # A single node: the local bus, no peers, nothing sent over a bus.
    cluster = herald.cluster()
    assert (cluster["node"].endswith(f":{server.port}"), cluster["bus"], cluster["peers"]) == (True, "local", [])
    assert cluster["envelopes_out"] == 0 and cluster["reconnects"] == 0
    with pytest.raises(AuthenticationError):
        Herald(server.url, "hk_wrong").cluster()


def test_timeout_and_connection_errors(server):
    # A socket that listens but never answers: the request must end with the timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(HeraldTimeoutError) as timed_out:
            Herald(f"http://127.0.0.1:{port}", "hk", timeout=0.5).notify(user="a")
        assert time.monotonic() - started < 5
        assert (timed_out.value.status, timed_out.value.code) == (None, "timeout")

    with pytest.raises(HeraldConnectionError) as refused:
        Herald(f"http://127.0.0.1:{free_port()}", "hk").health()
    assert refused.value.code == "unreachable"


def test_an_answer_that_is_not_heralds_json():
    """A proxy's HTML error page (or any answer without Herald's error JSON) is a HeraldError
    with the status and `invalid_response`, not a JSON decoding crash."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 502 if self.path.startswith("/healthz") else 200
            body = b"<html>Bad Gateway</html>"
            self.send_response(status)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        herald = Herald(f"http://127.0.0.1:{proxy.server_address[1]}", "hk", timeout=5)
        with pytest.raises(HeraldError) as bad_gateway:
            herald.health()
        assert (bad_gateway.value.status, bad_gateway.value.code) == (502, "invalid_response")
        with pytest.raises(HeraldError) as not_json:
            herald.presence("alice")
        assert (not_json.value.status, not_json.value.code) == (200, "invalid_response")
    finally:
        proxy.shutdown()
        proxy.server_close()
