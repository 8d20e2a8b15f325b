"""Shared fixtures: a real `herald serve --memory` on a free port of 127.0.0.1 with known
credentials (started once per test session, stopped by its PID), and an SSE reader over httpx.

The binary: $HERALD_BIN, else target/debug/herald of $CARGO_TARGET_DIR or of the repository.
Missing, the tests fail (they do not skip): run `cargo build -p herald` first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]

#: Longest wait for anything a test expects (a server start, an event on a stream).
WAIT_SECONDS = 20.0

SECRET = "python-tests-secret-" + "s" * 32
API_KEY = "hk_python_tests_api_key"

#: The VAPID key of `push_server` (a P-256 scalar, URL-safe base64, as crates/herald/tests/cli.rs
#: uses), and its public point, which `GET /v1/push/vapid-public-key` must answer.
VAPID_PRIVATE_KEY = "RS0WdYWWo1HajXg3NZR1olzCf31i-ZBGDkFyCs7j1jw"
VAPID_PUBLIC_KEY = "BAFpiPJBZOqNZcJGy0eiB1CIwMflt7ugC2B083zKPFu9djmajpSnVnUAFnlDNkzaKHf2gla5_FuDhXE-zIkx5MI"

#: A browser's push keys: RFC 8291's example user agent (a P-256 point and a 16-byte secret).
BROWSER_PUSH_KEYS = {
    "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
    "auth": "tBHItJI5svbpez7KI4CCXg",
}


def herald_binary() -> str:
    if os.environ.get("HERALD_BIN"):
        return os.environ["HERALD_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "debug" / "herald"
    if not binary.exists():
        pytest.fail(f"no herald binary at {binary}: run `cargo build -p herald` (or set HERALD_BIN)")
    return str(binary)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HeraldServer:
    """One `herald serve` process; `url`, `secret` and `api_key` are what the tests use."""

    def __init__(self, env: Optional[Dict[str, str]] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = SECRET
        self.api_key = API_KEY
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [herald_binary(), "serve", "--memory", "--listen", f"127.0.0.1:{self.port}"],
            env={
                "PATH": os.environ.get("PATH", ""),
                "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
                "HERALD_SECRET": SECRET,
                "HERALD_API_KEY": API_KEY,
                # The admin port's default (127.0.0.1:7301) would be taken by the first of two
                # servers at once (the guides' tests run one beside the session's).
                "HERALD_ADMIN_LISTEN": "127.0.0.1:0",
                **(env or {}),
            },
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"herald serve exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"herald serve did not answer /healthz in {WAIT_SECONDS} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it has not stopped within 15 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def server() -> Iterator[HeraldServer]:
    started = HeraldServer()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def push_server() -> Iterator[HeraldServer]:
    """A server with Web Push on: a VAPID key, and endpoints on loopback accepted (over http://),
    so that a `PushService` on 127.0.0.1 can stand in for a browser's push service."""
    started = HeraldServer(
        env={
            "HERALD_VAPID_PRIVATE_KEY": VAPID_PRIVATE_KEY,
            "HERALD_VAPID_SUBJECT": "mailto:ops@example.com",
            "HERALD_PUSH_ALLOW_LOOPBACK": "true",
        }
    )
    yield started
    started.stop()


class PushService:
    """A push service on a free port of 127.0.0.1: answers every POST 201 and keeps its path and
    headers (the body is encrypted for the browser). `endpoint(name)` is a subscription's URL."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: List[Tuple[str, Dict[str, str]]] = []
        self._arrived = threading.Condition()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with service._arrived:
                    service.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                    service._arrived.notify_all()
                self.send_response(201)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def endpoint(self, name: str) -> str:
        return f"{self.url}/push/{name}"

    def wait_for(self, count: int) -> List[Tuple[str, Dict[str, str]]]:
        """The pushes received once there are `count`, failing the test after WAIT_SECONDS."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, WAIT_SECONDS):
                pytest.fail(f"{len(self.received)} pushes within {WAIT_SECONDS} s, not {count}")
            return list(self.received)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def push_service() -> Iterator[PushService]:
    service = PushService()
    yield service
    service.stop()


def subscribe_browser(url: str, token: str, endpoint: str) -> Dict[str, Any]:
    """What herald.js's `herald.push.subscribe()` sends: the browser's subscription, registered
    with the subscriber token (`POST /v1/push/subscriptions`). Returns `{id, created_at}`."""
    answer = httpx.post(
        f"{url}/v1/push/subscriptions",
        headers={"authorization": f"Bearer {token}"},
        json={"endpoint": endpoint, "expirationTime": None, "keys": BROWSER_PUSH_KEYS},
        timeout=WAIT_SECONDS,
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


@pytest.fixture
def user() -> str:
    """A user id no other test uses (the server is shared by the session's tests)."""
    return "u-" + uuid.uuid4().hex[:12]


class SseStream:
    """A `GET /v1/stream` read with httpx streaming: `next_event()` returns (event, data) of the
    next event, skipping keep-alive comments, failing the test after WAIT_SECONDS."""

    def __init__(self, url: str, token: str, **params: str) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(WAIT_SECONDS))
        self._context = self._client.stream("GET", f"{url}/v1/stream", params={"token": token, **params})
        self.response = self._context.__enter__()
        self._lines = self.response.iter_lines()

    def next_event(self) -> Tuple[str, Any]:
        event, data = "message", []  # type: Tuple[str, List[str]]
        deadline = time.monotonic() + WAIT_SECONDS
        for line in self._lines:
            if time.monotonic() > deadline:
                break
            if line == "":
                if data:
                    return event, json.loads("\n".join(data))
                event = "message"
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
        pytest.fail(f"no SSE event within {WAIT_SECONDS} s (stream ended or stalled)")

    def expect(self, event: str) -> Any:
        got, data = self.next_event()
        assert got == event, f"expected {event}, got {got}: {data}"
        return data

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self._client.close()

    def __enter__(self) -> "SseStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def sse(server: HeraldServer) -> Iterator[Any]:
    """`sse(token, **params)` opens a stream (the status is checked by the test); all are closed
    at the end of the test."""
    opened: List[SseStream] = []

    def open_stream(token: str, **params: str) -> SseStream:
        stream = SseStream(server.url, token, **params)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


sys.path.insert(0, str(Path(__file__).parent))
