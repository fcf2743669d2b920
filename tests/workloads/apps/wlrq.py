"""RQ: a ``Worker`` (target ``run_worker``) and a ``WorkerPool`` of 2 (``run_pool``).

Both are RQ's own entry points: ``Worker.work()`` installs RQ's SIGTERM handler
(a warm shutdown: the job in hand finishes); ``WorkerPool.start()`` forks its
workers itself and, on SIGTERM, sends each of them SIGINT and waits for them.
"""

from __future__ import annotations

import os

import wljobs
from redis import Redis
from rq import Queue, Worker
from rq.worker_pool import WorkerPool

QUEUE = "wl"


def connection() -> Redis:
    return Redis.from_url(wljobs.redis_url())


def enqueue(token: str, seconds: float) -> None:
    Queue(QUEUE, connection=connection()).enqueue(wljobs.record, token, seconds)


def run_worker() -> None:
    redis = connection()
    # A name of its own per process: a SIGKILLed worker stays registered for a while.
    Worker([Queue(QUEUE, connection=redis)], connection=redis,
           name=f"wl-{os.getpid()}").work()


def run_pool() -> None:
    WorkerPool([QUEUE], connection=connection(), num_workers=2).start()
