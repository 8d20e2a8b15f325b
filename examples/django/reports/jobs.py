"""Background jobs. A toy runner (two threads) keeps the example self-contained; in production,
run `build_report` from your task queue (Celery, RQ, Django's tasks): it needs nothing but its
arguments."""

import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Set

from .notifications import herald

_runner = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jobs")
_pending: Set[Future] = set()
#: Jobs started and not finished, at most: one more is refused (`Busy`; the view answers 503)
#: rather than queued without end.
PENDING_MAX = 100


class Busy(Exception):
    """PENDING_MAX jobs are waiting already."""


def build_report(user: str, report_id: int) -> None:
    """Some slow work, then a notification to every tab of the user."""
    time.sleep(0.5)
    herald.notify(
        user=user,
        type="report.ready",
        data={"report": report_id, "title": f"Report #{report_id} is ready"},
        idempotency_key=f"report-{report_id}",  # a retried job does not notify twice
    )


def start(job, *args) -> None:
    if len(_pending) >= PENDING_MAX:
        raise Busy(f"{PENDING_MAX} jobs are waiting")
    future = _runner.submit(job, *args)
    _pending.add(future)
    future.add_done_callback(_pending.discard)


def wait_for_jobs(timeout: float = 30) -> None:
    """Waits for the jobs started so far (for tests); raises what a job raised."""
    for future in wait(list(_pending), timeout=timeout).done:
        future.result()
