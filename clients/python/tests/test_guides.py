"""The guides' example apps (examples/fastapi, examples/django), run as the guides say: each app
started on a free port (uvicorn, Django's runserver) next to a real `herald serve` that allows the
app's origin, and driven in headless Chromium by tests/browser/guide-page.mjs: sign in, wait for
herald.js to connect, start the background job, and see its notification in the page.
The Django app's views and job are also run with Django's test client.

Needs node with tests/browser's npm packages (`npm ci` there) and /usr/bin/chromium (or
$CHROMIUM): scripts/python-tests.sh installs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List
from urllib.parse import quote

import httpx
import pytest
from conftest import ROOT, WAIT_SECONDS, HeraldServer, SseStream, free_port

EXAMPLES = ROOT / "examples"
GUIDE_PAGE = ROOT / "tests" / "browser" / "guide-page.mjs"

#: The whole browser run (Chromium's start, sign-in, connect, job, notification) gets this long.
BROWSER_RUN_SECONDS = 90


class App:
    """An example app's process on a free port, stopped by its PID."""

    def __init__(self, command: List[str], cwd: Path, env: Dict[str, str], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command} exited ({self.process.returncode}):\n{self.log()}")
            try:
                httpx.get(self.url + "/", timeout=1)
                break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{command} did not answer in {WAIT_SECONDS} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_page(app_url: str, user: str, screenshot: str) -> List[str]:
    """Runs guide-page.mjs; returns the notifications the page shows."""
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    done = subprocess.run(
        ["node", str(GUIDE_PAGE), app_url, user, str(artifacts / screenshot)],
        capture_output=True,
        text=True,
        timeout=BROWSER_RUN_SECONDS,
    )
    assert done.returncode == 0, f"the page failed:\n{done.stderr}\n{done.stdout}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def herald_for_app() -> Iterator[tuple]:
    """A Herald that allows one app origin (the page loads herald.js from it, cross-origin):
    yields (herald server, the app's port)."""
    app_port = free_port()
    server = HeraldServer(env={"HERALD_ALLOWED_ORIGINS": f"http://127.0.0.1:{app_port}"})
    yield server, app_port
    server.stop()


def app_env(server: HeraldServer) -> Dict[str, str]:
    return {"HERALD_URL": server.url, "HERALD_API_KEY": server.api_key, "HERALD_SECRET": server.secret}


def test_fastapi_guide_in_chromium(herald_for_app) -> None:
    # Fails if the app's token is refused, herald.js cannot load or connect cross-origin, or the
    # background job's notification does not reach the page.
    server, port = herald_for_app
    app = App(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        EXAMPLES / "fastapi",
        app_env(server),
        port,
    )
    try:
        # A name that would end a <script> if the page put it there unescaped.
        shown = run_page(app.url, "ada</script>", "guide-fastapi.png")
        assert len(shown) == 1 and shown[0].startswith("Report #") and shown[0].endswith(" is ready"), shown
        # The job's notification is stored for the user the app signed in.
        stored = httpx.get(
            f"{server.url}/v1/users/{quote('ada</script>', safe='')}/notifications", headers={"authorization": f"Bearer {server.api_key}"}
        ).json()["notifications"]
        assert [n["type"] for n in stored] == ["report.ready"]
    finally:
        app.stop()


def test_django_guide_in_chromium(herald_for_app) -> None:
    server, port = herald_for_app
    app = App(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        EXAMPLES / "django",
        app_env(server),
        port,
    )
    try:
        shown = run_page(app.url, "grace", "guide-django.png")
        assert len(shown) == 1 and shown[0].endswith(" is ready"), shown
    finally:
        app.stop()


def test_django_views_and_job_with_the_test_client(server: HeraldServer, user: str) -> None:
    """The Django example's views with Django's test client, against the real Herald: the token
    the view mints opens a real stream, which receives what the job publishes."""
    code = f"""
import json, os, sys
sys.path.insert(0, {str(EXAMPLES / 'django')!r})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reportsite.settings")
import django
django.setup()
from django.test import Client
from reports import jobs

client = Client()
assert client.get("/herald-token").status_code == 401, "no token without a sign-in"
assert client.post("/sign-in", {{"name": {user!r}}}).status_code == 302
token = client.get("/herald-token").json()["token"]
print(json.dumps({{"token": token}}), flush=True)
sys.stdin.readline()          # the test opened a stream with the token
answer = client.post("/reports")
assert answer.status_code == 202, answer.status_code
jobs.wait_for_jobs()
print(json.dumps({{"report": answer.json()["report"]}}), flush=True)
"""
    env = {**os.environ, **app_env(server)}
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        token = json.loads(line)["token"]
        with SseStream(server.url, token) as stream:
            hello = stream.expect("hello")
            assert hello["user"] == user
            child.stdin.write("go\n")
            child.stdin.flush()
            report = json.loads(child.stdout.readline())["report"]
            notification = stream.expect("notification")
            assert notification["type"] == "report.ready"
            assert notification["data"] == {"report": report, "title": f"Report #{report} is ready"}
        assert child.wait(timeout=WAIT_SECONDS) == 0, child.stderr.read() if child.stderr else ""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("guide", ["fastapi.md", "django.md"])
def test_guide_quotes_the_examples_as_they_are(guide: str) -> None:
    """Every code block after `<!-- quote: PATH -->` in the guide is in PATH as it is: fails when
    the example changes under the guide, or the guide under the example, and when a marker is
    not followed by a code block (it would check nothing). tests/browser/apps.mjs's checkQuotes
    does the same for the Express and axum guides."""
    checked = check_quotes(guide, (ROOT / "docs" / "guides" / guide).read_text())
    assert checked >= 5, f"{guide} quotes {checked} blocks"


def test_a_quote_marker_without_its_block_fails_the_check() -> None:
    block = "```toml\n[build-system]\n```\n"
    whole = f"<!-- quote: clients/python/pyproject.toml -->\n{block}"
    assert check_quotes("whole.md", whole + whole) == 2
    # The second marker lost its block (a blank line in between, or prose).
    broken = whole + f"<!-- quote: clients/python/pyproject.toml -->\n\n{block}"
    with pytest.raises(AssertionError, match="2 `<!-- quote: PATH -->` markers but 1 quoted block"):
        check_quotes("broken.md", broken)


def check_quotes(guide: str, text: str) -> int:
    """Checks each code block that follows a `<!-- quote: PATH -->` line against PATH, and that
    every marker has its block. Returns how many blocks it checked."""
    import re

    quotes = re.findall(r"<!-- quote: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.DOTALL)
    for path, block in quotes:
        source = (ROOT / path).read_text()
        assert block in source, f"{guide}: this block is not in {path} as it is:\n{block}"
    markers = text.count("<!-- quote: ")
    assert len(quotes) == markers, (
        f"{guide}: {markers} `<!-- quote: PATH -->` markers but {len(quotes)} quoted blocks: "
        "each marker must be followed, on the next line, by a code block"
    )
    return len(quotes)
