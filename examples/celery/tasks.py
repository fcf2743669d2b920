"""The Celery app and its task, and the in-process worker's companion target.

Run by both workers of the example:

- the ``celery-exec`` companion execs ``python -m celery -A tasks worker ...``,
  a new interpreter that imports this module from scratch;
- the ``celery-forked`` companion is forked from the preloaded Gunicorn master,
  where this module (and Celery, kombu, redis...) is already imported, and
  calls :func:`run_worker`.

Nothing here connects to Redis at import time: Celery connects on first use,
in whichever process uses it.
"""

from __future__ import annotations

import importlib
import os

from celery import Celery, current_task
from celery.signals import worker_ready

import gunicorn_companion

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL

# Redis is both the broker (the queues) and the result backend.
app = Celery("tasks", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,  # and no warning about it
    result_expires=3600,  # seconds a result stays in Redis
)


# Celery imports its worker, and kombu its Redis transport, only when a worker
# starts: in a forked companion, that would be after the fork, into memory of
# its own. Imported here instead, in the master that preloads this module, the
# forked worker finds them already loaded, in memory it shares with the master.
# (The exec companion imports them anyway, and the HTTP workers share them.)
# Set CELERY_EXAMPLE_PRELOAD_WORKER=0 to see the difference with memory.py.
WORKER_MODULES = (
    "celery.apps.worker",
    "celery.worker.components",
    "celery.worker.consumer",
    "celery.worker.strategy",
    "celery.concurrency.solo",
    "celery.app.control",
    "celery.events",
    "celery.backends.redis",
    "kombu.transport.redis",
)

if os.environ.get("CELERY_EXAMPLE_PRELOAD_WORKER", "1") != "0":
    for _module in WORKER_MODULES:
        importlib.import_module(_module)


@app.task
def add(x: int, y: int) -> dict:
    """The example's task: a sum, and which worker process computed it."""
    return {"sum": x + y, "worker": current_task.request.hostname, "pid": os.getpid()}


@worker_ready.connect
def _tell_the_manager(**_: object) -> None:
    """Celery is consuming: tell gunicorn-companion, which marks the companion
    RUNNING (``wait_ready: True``). A no-op when not run as a companion. It works
    in the exec'd worker too: the notify socket survives exec."""
    gunicorn_companion.ready()


def run_worker() -> int:
    """Companion target: a Celery worker in this (forked) process, until SIGTERM.

    The worker ``celery -A tasks worker`` would start, built with ``app.Worker``
    instead of the command line (which would import click and prompt_toolkit for
    nothing), on the queue named by ``$CELERY_QUEUE`` (the companion's ``env``).
    The solo pool runs tasks in this process: no pool child to fork, and the same
    pool as the exec companion, so their memory compares like for like. Celery
    installs its own SIGTERM handler: a warm shutdown, the running task finishes
    first. Returns the worker's exit code, which becomes the companion's.
    """
    queue = os.environ.get("CELERY_QUEUE", "forked")
    worker = app.Worker(
        pool="solo",
        concurrency=1,
        queues=[queue],
        hostname=f"{queue}@%h",
        without_mingle=True,
        without_gossip=True,
        loglevel="INFO",
    )
    worker.start()
    return worker.exitcode or 0
