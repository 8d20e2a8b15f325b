"""A FastAPI app wired to Herald (docs/guides/fastapi.md): a toy sign-in, a token endpoint for
the page's herald.js, a page that shows notifications live, and a background job that notifies
the user when their report is ready.

Run: HERALD_URL=http://127.0.0.1:7300 HERALD_API_KEY=… HERALD_SECRET=… uvicorn app:app --port 8000
(and Herald with --allowed-origins http://127.0.0.1:8000, since the page is on another origin).
"""

import asyncio
import json
import os
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
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
SIGN_INS_MAX = 10_000  # one more signs the oldest out (dicts keep insertion order)


def current_user(request: Request) -> Optional[SignIn]:
    return SIGN_INS.get(request.cookies.get("app_session", ""))


def signed_in(request: Request) -> SignIn:
    sign_in = current_user(request)
    if sign_in is None:
        raise HTTPException(status_code=401, detail="sign in first")
    return sign_in


@app.post("/sign-in")
async def sign_in(name: str = Form(...)):
    name = name.strip()
    if not 1 <= len(name.encode()) <= 128:
        raise HTTPException(status_code=400, detail="a name of 1 to 128 bytes")
    if len(SIGN_INS) >= SIGN_INS_MAX:
        del SIGN_INS[next(iter(SIGN_INS))]
    cookie = secrets.token_urlsafe(32)
    SIGN_INS[cookie] = SignIn(user=name, session=secrets.token_hex(8))
    response = RedirectResponse("/", status_code=303)
    # In production: secure=True too (HTTPS only).
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

PAGE = (Path(__file__).parent / "page.html").read_text()


def page_config(config: dict) -> str:
    """JSON for a <script type="application/json">: `<` escaped, so no value can end the script."""
    return json.dumps(config).replace("<", "\\u003c")


@app.get("/", response_class=HTMLResponse)
async def home(request: Request):
    me = current_user(request)
    if me is None:
        return SIGN_IN_PAGE
    return PAGE.replace("PAGE_CONFIG", page_config({"user": me.user, "heraldUrl": HERALD_PUBLIC_URL}))
