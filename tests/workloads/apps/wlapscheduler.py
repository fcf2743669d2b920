"""APScheduler 3: a ``BackgroundScheduler`` whose jobs live in a Redis job store.

The web app adds a job ("run now") to the shared job store through a paused
scheduler of its own; the companion's scheduler runs it. APScheduler 3 does not
wake up when another process adds a job, so the companion also runs a no-op
job every 0.2 s: each run makes it look at the job store again (APScheduler's
documented limitation: a job store is not shared between processes).

SIGTERM is taken by ``sigwait`` in the main thread (blocked before the
scheduler's threads start, which inherit the mask); then ``shutdown(wait=True)``
waits for the running jobs.
"""

from __future__ import annotations

import signal
from datetime import datetime, timezone
from functools import cache

import wljobs
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.redis import RedisJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from redis import Redis

JOBS_KEY = "wl.apscheduler.jobs"
RUN_TIMES_KEY = "wl.apscheduler.run_times"


def job_store() -> RedisJobStore:
    redis = Redis.from_url(wljobs.redis_url())
    return RedisJobStore(jobs_key=JOBS_KEY, run_times_key=RUN_TIMES_KEY,
                         connection_pool=redis.connection_pool)


@cache
def web_scheduler() -> BackgroundScheduler:
    """The web worker's handle on the job store: started paused, it never runs a job."""
    scheduler = BackgroundScheduler(jobstores={"default": job_store()}, timezone=timezone.utc)
    scheduler.start(paused=True)
    return scheduler


def enqueue(token: str, seconds: float) -> None:
    web_scheduler().add_job(wljobs.record, "date", args=[token, seconds], id=token,
                            run_date=datetime.now(timezone.utc), misfire_grace_time=None)


def _look_again() -> None:
    """Nothing: running makes the scheduler read the job store again."""


def run_scheduler() -> None:
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    scheduler = BackgroundScheduler(jobstores={"default": job_store(), "local": MemoryJobStore()},
                                    timezone=timezone.utc)
    scheduler.add_job(_look_again, "interval", seconds=0.2, jobstore="local")
    scheduler.start()
    signal.sigwait(stop_signals)
    scheduler.shutdown(wait=True)
