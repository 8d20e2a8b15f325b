import secrets

from django.conf import settings
from django.http import HttpResponseBadRequest, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from . import jobs
from .notifications import herald


# --- A toy sign-in: replace with your own (django.contrib.auth's login sets the same session). ---


@require_POST
def sign_in(request):
    name = request.POST.get("name", "").strip()
    if not 1 <= len(name.encode()) <= 128:
        return HttpResponseBadRequest("a name of 1 to 128 bytes")
    request.session.cycle_key()
    request.session["user"] = name
    # A stable id for this sign-in, given to Herald as the session: not the session cookie's
    # value, since the page can read the token it is put in.
    request.session["herald_session"] = secrets.token_hex(8)
    return HttpResponseRedirect("/")


@require_POST
def sign_out(request):
    if "user" in request.session:
        # Closes this session's tabs in Herald and refuses the tokens it was given.
        herald.close_session(request.session["user"], request.session["herald_session"])
    request.session.flush()
    return HttpResponseRedirect("/")


# --- Herald: the token for the page, and a job that notifies. ---


@require_GET
def herald_token(request):
    if "user" not in request.session:
        return JsonResponse({"error": "sign in first"}, status=401)
    token = herald.mint_token(request.session["user"], session=request.session["herald_session"], ttl=15 * 60)
    return JsonResponse({"token": token})


@require_POST
def start_report(request):
    if "user" not in request.session:
        return JsonResponse({"error": "sign in first"}, status=401)
    report_id = secrets.randbelow(1_000_000)
    try:
        jobs.start(jobs.build_report, request.session["user"], report_id)
    except jobs.Busy:
        return JsonResponse({"error": "too many reports in progress, try again later"}, status=503)
    return JsonResponse({"report": report_id}, status=202)


# --- The page. ---


def home(request):
    if "user" not in request.session:
        return render(request, "reports/sign_in.html")
    return render(request, "reports/page.html", {"user": request.session["user"], "herald_url": settings.HERALD_PUBLIC_URL})
