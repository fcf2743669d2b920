"""Celery: a prefork worker with 2 pool processes (target ``run_worker``, through
``app.worker_main``, the ``celery worker`` command line), and ``celery beat``
(a ``command`` companion, exec'd) sending ``tick`` every half second.

The worker calls ``gunicorn_companion.ready()`` from Celery's ``worker_ready``
signal. On SIGTERM Celery's main process does a warm shutdown: it stops
consuming, waits for the tasks its pool children are running, then exits.
"""

from __future__ import annotations

import uuid

import wljobs
from celery import Celery
from celery.signals import worker_ready

import gunicorn_companion

app = Celery("wlcelery", broker=wljobs.redis_url(), backend=wljobs.redis_url())
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={"tick": {"task": "wlcelery.tick", "schedule": 0.5}},
)


@app.task
def record(token: str, seconds: float) -> int:
    return wljobs.record(token, seconds)


@app.task
def tick() -> int:
    return wljobs.record(f"tick-{uuid.uuid4().hex}")


@worker_ready.connect
def _ready(**_: object) -> None:
    gunicorn_companion.ready()


def enqueue(token: str, seconds: float) -> None:
    record.delay(token, seconds)


def run_worker() -> None:
    app.worker_main(["worker", "--pool=prefork", "--concurrency=2", "--loglevel=INFO",
                     "--without-mingle", "--without-gossip", "--without-heartbeat"])
