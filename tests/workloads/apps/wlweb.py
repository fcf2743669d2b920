"""The web app of the workloads: ``GET /enqueue?token=T&token=U&seconds=S`` (or
``n=N`` for new tokens) hands the jobs to the workload named by ``$WL_WORKLOAD``
and answers their tokens as JSON.

Each workload module has ``enqueue(token, seconds)``, its library's own way of
handing over a job (an RQ queue, a Celery task, an APScheduler job store, a
Socket.IO emit through Redis, an HTTP call to the exec'd program). The django-q2
workload has its own Django project (``wldjango``) with the same URL.
"""

from __future__ import annotations

import importlib
import json
import os
import uuid
from urllib.parse import parse_qs


def tokens_for(query: str) -> tuple[list[str], float]:
    """``token=T`` (repeated) names the jobs; else ``n=N`` new tokens."""
    params = parse_qs(query)
    seconds = float(params.get("seconds", ["0"])[0])
    count = int(params.get("n", ["1"])[0])
    tokens = params.get("token") or [uuid.uuid4().hex for _ in range(count)]
    return tokens, seconds


def workload():
    return importlib.import_module(f"wl{os.environ['WL_WORKLOAD']}")


# Imported in the master (preload_app): the companions are forked from it.
WORKLOAD = workload()


def app(environ, start_response):
    if environ["PATH_INFO"] != "/enqueue":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    tokens, seconds = tokens_for(environ.get("QUERY_STRING", ""))
    for token in tokens:
        WORKLOAD.enqueue(token, seconds)
    body = json.dumps({"tokens": tokens}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
