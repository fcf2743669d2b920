"""The web part: a plain WSGI app (``demo.web:app``) served by Gunicorn's HTTP workers.

Routes:

- ``GET /``            the page: a form to enqueue a job, recent jobs, the last heartbeat
- ``POST /jobs``       the page's form (``n=12``); redirects (303) back to ``/``
- ``GET /api/state``   ``{"jobs": [...], "heartbeat": {"at": ..., "pid": ..., "count": ...}}``
                       (``heartbeat`` is null until the scheduler's first beat)
- ``POST /api/jobs``   a form (``n=12``) or JSON (``{"n": 12}``) body; 201 ``{"id": ...}``

The web workers only write jobs and read state: the jobs are run by the worker
companion and the heartbeat comes from the scheduler companion (see tasks.py).
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from http import HTTPStatus
from urllib.parse import parse_qs

from . import db, tasks

# How many jobs the page and /api/state show.
RECENT_JOBS = 20
API_RECENT_JOBS = 50

# Request bodies are a number; anything bigger than this is refused.
MAX_BODY_BYTES = 16 * 1024

# A queued job older than this gets a hint that no worker may be running.
STUCK_JOB_SECONDS = 5.0


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: list | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


Response = tuple[HTTPStatus, list, bytes]


# -- responses -----------------------------------------------------------------


def _status_line(status: HTTPStatus) -> str:
    return f"{status.value} {status.phrase}"


def _json(status: HTTPStatus, payload: object) -> Response:
    body = (json.dumps(payload) + "\n").encode("utf-8")
    return status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], body


def _html(status: HTTPStatus, page: str) -> Response:
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
    return status, headers, page.encode("utf-8")


def _redirect(location: str) -> Response:
    return HTTPStatus.SEE_OTHER, [("Location", location), ("Content-Type", "text/plain")], b""


# -- request bodies ------------------------------------------------------------


def _read_body(environ: dict) -> bytes:
    stream = environ["wsgi.input"]
    raw_length = (environ.get("CONTENT_LENGTH") or "").strip()
    if raw_length:
        try:
            length = int(raw_length)
        except ValueError:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        return stream.read(length) if length > 0 else b""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        return body
    return b""


def _parse_n(value: object) -> int:
    problem = f"n must be a whole number from 0 to {tasks.MAX_N}"
    if isinstance(value, bool):
        raise HTTPError(HTTPStatus.BAD_REQUEST, problem)
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or not text.isascii():
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"{problem}, got {value!r}")
        value = int(text)
    if not isinstance(value, int) or not 0 <= value <= tasks.MAX_N:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"{problem}, got {value!r}")
    return value


def _n_from_request(environ: dict) -> int:
    """``n`` from a JSON object or an urlencoded form, whichever the body is."""
    body = _read_body(environ)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the body is not UTF-8") from None
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    # `curl -d '{"n": 12}'` labels JSON as a form, so look at the body too.
    if content_type == "application/json" or text.lstrip().startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"invalid JSON: {exc}") from None
        if not isinstance(payload, dict) or "n" not in payload:
            raise HTTPError(HTTPStatus.BAD_REQUEST, 'expected a JSON object like {"n": 12}')
        return _parse_n(payload["n"])
    values = parse_qs(text, keep_blank_values=True).get("n")
    if not values:
        raise HTTPError(HTTPStatus.BAD_REQUEST, 'missing field n (send n=12 or {"n": 12})')
    return _parse_n(values[-1])


# -- handlers ------------------------------------------------------------------


def _base(environ: dict) -> str:
    """The URL prefix the app is mounted at ('' at the root)."""
    return environ.get("SCRIPT_NAME", "").rstrip("/")


def api_state(environ: dict) -> Response:
    with closing(db.connect()) as conn:
        jobs = db.recent_jobs(conn, API_RECENT_JOBS)
        heartbeat = db.read_heartbeat(conn)
    return _json(
        HTTPStatus.OK,
        {
            "jobs": [job.as_json() for job in jobs],
            "heartbeat": None if heartbeat is None else heartbeat.as_json(),
        },
    )


def api_post_job(environ: dict) -> Response:
    n = _n_from_request(environ)
    with closing(db.connect()) as conn:
        job_id = db.enqueue_job(conn, n)
    return _json(HTTPStatus.CREATED, {"id": job_id})


def form_post_job(environ: dict) -> Response:
    n = _n_from_request(environ)
    with closing(db.connect()) as conn:
        db.enqueue_job(conn, n)
    # Post/Redirect/Get: reloading the page afterwards does not enqueue the job again.
    return _redirect(_base(environ) + "/")


def index(environ: dict) -> Response:
    with closing(db.connect()) as conn:
        jobs = db.recent_jobs(conn, RECENT_JOBS)
        heartbeat = db.read_heartbeat(conn)
    return _html(HTTPStatus.OK, render_page(_base(environ), jobs, heartbeat, time.time()))


ROUTES: dict[str, dict[str, Callable[[dict], Response]]] = {
    "/": {"GET": index},
    "/jobs": {"POST": form_post_job},
    "/api/state": {"GET": api_state},
    "/api/jobs": {"POST": api_post_job},
}


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """The WSGI entry point."""
    path = environ.get("PATH_INFO") or "/"
    method = environ.get("REQUEST_METHOD", "GET").upper()
    try:
        methods = ROUTES.get(path)
        if methods is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no page at {path}")
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allow = ", ".join(sorted(set(methods) | ({"HEAD"} if "GET" in methods else set())))
            raise HTTPError(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed here", [("Allow", allow)]
            )
        status, headers, body = handler(environ)
    except HTTPError as exc:
        if path.startswith("/api/"):
            status, headers, body = _json(exc.status, {"error": exc.message})
        else:
            status, headers, body = _html(exc.status, render_error(_base(environ), exc))
        headers = headers + exc.headers
    headers = headers + [("Content-Length", str(len(body)))]
    start_response(_status_line(status), headers)
    return [b"" if method == "HEAD" else body]


# -- HTML ----------------------------------------------------------------------


def _clock(at: float | None) -> str:
    if at is None:
        return ""
    millis = int(at * 1000) % 1000
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{millis:03d}"


def _cell(value: object) -> str:
    return "" if value is None else html.escape(str(value))


def _heartbeat_interval() -> float:
    try:
        return tasks.heartbeat_seconds()
    except ValueError:
        return tasks.DEFAULT_HEARTBEAT_SECONDS


def render_heartbeat(heartbeat: db.Heartbeat | None, now: float) -> str:
    interval = _heartbeat_interval()
    if heartbeat is None:
        return (
            '<p id="heartbeat" class="warn">No heartbeat yet. The scheduler companion writes '
            f"one every {interval:g}&nbsp;s; if none comes, the companions are not running "
            "(plain <code>gunicorn</code> does not start them).</p>"
        )
    age = max(0.0, now - heartbeat.at)
    stale = age > 3 * interval + 1
    note = " &mdash; stale: is the scheduler companion running?" if stale else ""
    return (
        f'<p id="heartbeat" class="{"warn" if stale else "ok"}">'
        f'Last heartbeat <b class="count">#{heartbeat.count}</b> '
        f'from scheduler pid <b class="pid">{heartbeat.pid}</b> '
        f"at {_clock(heartbeat.at)}, <b>{age:.1f}&nbsp;s ago</b>{note}.</p>"
    )


def render_jobs(jobs: list[db.Job], now: float) -> str:
    if not jobs:
        return '<p id="jobs">No jobs yet: enqueue one above.</p>'
    rows = []
    for job in jobs:
        rows.append(
            f'<tr id="job-{job.id}" class="{job.status}">'
            f"<td>{job.id}</td><td>{job.n}</td>"
            f'<td class="status">{job.status}</td>'
            f'<td class="result">{_cell(job.result)}</td>'
            f'<td class="pid">{_cell(job.worker_pid)}</td>'
            f"<td>{_clock(job.created_at)}</td><td>{_clock(job.started_at)}</td>"
            f"<td>{_clock(job.finished_at)}</td></tr>"
        )
    hint = ""
    queued = [job for job in jobs if job.status == "queued"]
    if queued:
        oldest = min(queued, key=lambda job: job.created_at)
        waited = now - oldest.created_at
        if waited > STUCK_JOB_SECONDS:
            hint = (
                f'<p class="warn">Job {oldest.id} has been queued for {waited:.0f}&nbsp;s: '
                "is the worker companion running?</p>"
            )
    return (
        f'{hint}<table id="jobs"><thead><tr><th>job</th><th>n</th><th>status</th>'
        "<th>fib(n)</th><th>companion pid</th><th>queued at</th><th>started at</th>"
        "<th>finished at</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .6em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
tr.queued td.status { color: #a60; } tr.running td.status { color: #06a; }
tr.done td.status { color: #080; }
.warn { color: #a30; } .ok { color: #080; }
footer { margin-top: 2em; color: #666; font-size: .9em; }
"""

# Refreshes the live part once a second by fetching the page again and swapping
# it in, so the page is rendered in one place (Python) only. Without JavaScript
# the page still works: reload it by hand.
_SCRIPT = """
const live = () => document.getElementById("live");
setInterval(async () => {
  try {
    const response = await fetch(location.pathname, {cache: "no-store"});
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("live");
    if (fresh) live().replaceWith(fresh);
  } catch (error) { /* the server is restarting: try again next time */ }
}, 1000);
"""


def render_page(base: str, jobs: list[db.Job], heartbeat: db.Heartbeat | None, now: float) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gunicorn-companion demo</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>gunicorn-companion demo</h1>
<p>This page is served by Gunicorn's HTTP workers. The jobs are run by the
<code>worker</code> companion and the heartbeat is written by the <code>scheduler</code>
companion; all of them share one SQLite database.</p>
<form method="post" action="{html.escape(base)}/jobs">
  <label>n = <input type="number" name="n" min="0" max="{tasks.MAX_N}" value="12" required></label>
  <button type="submit">Enqueue a job computing fib(n)</button>
</form>
<div id="live">
<h2>Scheduler</h2>
{render_heartbeat(heartbeat, now)}
<h2>Recent jobs</h2>
{render_jobs(jobs, now)}
<footer>Rendered at {_clock(now)} by HTTP worker pid {os.getpid()}
(its parent, the Gunicorn master, is pid {os.getppid()}).
Database: <code>{html.escape(db.db_path())}</code>.</footer>
</div>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def render_error(base: str, error: HTTPError) -> str:
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{_status_line(error.status)}</title></head>
<body>
<h1>{_status_line(error.status)}</h1>
<p>{html.escape(error.message)}</p>
<p><a href="{html.escape(base)}/">Back to the demo</a></p>
</body>
</html>
"""
