"""The companion targets: an RQ worker and an APScheduler scheduler.

Each is a plain function that takes no arguments and blocks until it is asked
to stop. gunicorn-companion forks it from the preloaded master and passes each
instance its name in the environment: ``GUNICORN_COMPANION_NAME`` (``rq-worker``)
and ``GUNICORN_COMPANION_INSTANCE`` (``0``, ``1``, ... with ``processes: N``).
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler
from rq import Queue, Worker

from . import jobs
from .config import QUEUE_NAME, redis, tick_seconds


def worker_name() -> str:
    """``rq-worker:0.<pid>``: the companion instance, then the process.

    RQ refuses to start a worker whose name is still registered in Redis, and a
    worker that was killed (SIGKILL, OOM) stays registered until its key expires
    (minutes). The pid makes the restarted process's name a new one; the
    companion name and instance still tell at a glance which one it is.
    """
    name = os.environ.get("GUNICORN_COMPANION_NAME", "rq-worker")
    instance = os.environ.get("GUNICORN_COMPANION_INSTANCE", "0")
    return f"{name}:{instance}.{os.getpid()}"


def run_worker() -> None:
    """Companion target: an RQ worker on the ``default`` queue, until SIGTERM.

    ``Worker.work()`` installs RQ's own SIGTERM/SIGINT handlers: the first signal
    is a warm shutdown (an idle worker exits at once, a busy one when its job is
    done), a second one a cold shutdown (the job is killed). So this companion's
    ``stop_timeout`` should be longer than the longest job.
    """
    connection = redis()
    worker = Worker([Queue(QUEUE_NAME, connection=connection)], connection=connection,
                    name=worker_name())
    worker.work(logging_level="INFO")


def run_scheduler() -> None:
    """Companion target: enqueue ``jobs.tick`` every ``$RQ_EXAMPLE_TICK_SECONDS``, until SIGTERM.

    The scheduler runs its jobs in threads of its own; the main thread only waits
    for the stop signal. The signals are blocked before the scheduler starts its
    threads, which inherit the mask, so SIGTERM can only be taken by ``sigwait``
    in the main thread: no handler runs in the middle of anything.
    """
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    pid = os.getpid()
    interval = tick_seconds()
    queue = Queue(QUEUE_NAME, connection=redis())

    def enqueue_tick() -> None:
        job = queue.enqueue(jobs.tick, result_ttl=60)
        print(f"scheduler {pid}: enqueued tick {job.id}", flush=True)

    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(
        enqueue_tick,
        "interval",
        seconds=interval,
        id="tick",
        next_run_time=datetime.now(timezone.utc),  # the first one now, not after a period
        coalesce=True,  # after a stall, one catch-up run, not a burst
        max_instances=1,
    )
    scheduler.start()
    print(f"scheduler {pid}: started, a tick every {interval:g}s", flush=True)
    received = signal.sigwait(stop_signals)
    scheduler.shutdown(wait=True)  # lets a running enqueue finish
    print(f"scheduler {pid}: {signal.Signals(received).name} received, exiting", flush=True)
