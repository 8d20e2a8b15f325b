"""A FastAPI app wired to Herald (docs/guides/fastapi.md): a toy sign-in, a token endpoint for
the page's herald.js, a page that shows notifications live, and a background job that notifies
the user when their report is ready.

Run: HERALD_URL=http://127.0.0.1:7300 HERALD_API_KEY=… HERALD_SECRET=… uvicorn app:app --port 8000
(and Herald with --allowed-origins http://127.0.0.1:8000, since the page is on another origin).
"""

import asyncio
import html
import json
import os
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Dict, Optional

from fastapi import BackgroundTasks, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from herald import AsyncHerald

# Where this backend reaches Herald, and where the browser does (the same unless Herald is
# behind a proxy or another host name from the browser's side).
HERALD_URL = os.environ["HERALD_URL"]
HERALD_PUBLIC_URL = os.environ.get("HERALD_PUBLIC_URL", HERALD_URL)

herald = AsyncHerald(HERALD_URL, api_key=os.environ["HERALD_API_KEY"], secret=os.environ["HERALD_SECRET"])


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await herald.aclose()


app = FastAPI(lifespan=lifespan)


# --- A toy sign-in: replace with your own (the sign-in is yours; Herald only needs a user id). ---


@dataclass
class SignIn:
    user: str
    # A stable id for this sign-in, given to Herald as the session: not the cookie's value,
    # since the page can read the token it is put in.
    session: str


SIGN_INS: Dict[str, SignIn] = {}  # cookie value -> sign-in (in memory: a toy)


def current_user(request: Request) -> Optional[SignIn]:
    return SIGN_INS.get(request.cookies.get("app_session", ""))


def signed_in(request: Request) -> SignIn:
    sign_in = current_user(request)
    if sign_in is None:
        raise HTTPException(status_code=401, detail="sign in first")
    return sign_in


@app.post("/sign-in")
async def sign_in(name: str = Form(...)):
    cookie = secrets.token_urlsafe(32)
    SIGN_INS[cookie] = SignIn(user=name, session=secrets.token_hex(8))
    response = RedirectResponse("/", status_code=303)
    response.set_cookie("app_session", cookie, httponly=True, samesite="lax")
    return response


@app.post("/sign-out")
async def sign_out(request: Request, me: SignIn = Depends(signed_in)):
    SIGN_INS.pop(request.cookies["app_session"], None)
    # Closes this session's tabs in Herald and refuses the tokens it was given.
    await herald.close_session(me.user, me.session)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie("app_session")
    return response


# --- Herald: the token for the page, and a job that notifies. ---


@app.get("/herald-token")
async def herald_token(me: SignIn = Depends(signed_in)):
    # Short-lived: herald.js asks again whenever it expires.
    return {"token": herald.mint_token(me.user, session=me.session, ttl=15 * 60)}


async def build_report(user: str, report_id: int) -> None:
    """The background job: some slow work, then a notification to every tab of the user."""
    await asyncio.sleep(0.5)
    await herald.notify(
        user=user,
        type="report.ready",
        data={"report": report_id, "title": f"Report #{report_id} is ready"},
        idempotency_key=f"report-{report_id}",  # a retried job does not notify twice
    )


@app.post("/reports", status_code=202)
async def start_report(background: BackgroundTasks, me: SignIn = Depends(signed_in)):
    report_id = secrets.randbelow(1_000_000)
    background.add_task(build_report, me.user, report_id)
    return {"report": report_id}


# --- The page. ---

SIGN_IN_PAGE = """<!doctype html>
<title>Sign in</title>
<form method="post" action="/sign-in">
  <input name="name" placeholder="Your name" required> <button>Sign in</button>
</form>
"""

PAGE = """<!doctype html>
<title>Reports</title>
<p>Signed in as <b>{user}</b> <span id="status">connecting</span></p>
<button id="report">Make a report</button>
<form method="post" action="/sign-out"><button>Sign out</button></form>
<ul id="notifications"></ul>
<script type="module">
  import {{ Herald }} from {herald_js};

  const herald = new Herald({{
    url: {herald_url},
    token: async () => (await (await fetch('/herald-token')).json()).token,
  }});
  herald.on('status', (status) => document.querySelector('#status').textContent = status);
  herald.on('notification', (n) => {{
    const item = document.createElement('li');
    item.textContent = n.data.title;
    item.dataset.type = n.type;
    document.querySelector('#notifications').prepend(item);
  }});
  document.querySelector('#report').onclick = () => fetch('/reports', {{ method: 'POST' }});
</script>
"""


@app.get("/", response_class=HTMLResponse)
async def home(request: Request):
    me = current_user(request)
    if me is None:
        return SIGN_IN_PAGE
    return PAGE.format(
        user=html.escape(me.user),
        herald_js=json.dumps(f"{HERALD_PUBLIC_URL}/herald.js"),
        herald_url=json.dumps(HERALD_PUBLIC_URL),
    )
