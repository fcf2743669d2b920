"""The companions: a job worker and a heartbeat scheduler.

Each target is a plain function that takes no arguments and runs until it is
asked to stop, like a ``main()``. gunicorn-companion forks it from the preloaded
master, so this module is already imported (by ``demo.web``) when it starts.

A forked companion starts with the default signal handlers, under which SIGTERM
kills the process on the spot, possibly halfway through a database write. So the
first thing each target does is install handlers that only set a flag; the loops
check the flag between steps and wait in short slices, so they stop within a
fraction of a second and return normally (exit code 0).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import closing

from . import db

# Jobs compute the n-th Fibonacci number; fib(90) is the last that fits in
# SQLite's 64-bit INTEGER.
MAX_N = 90

# The worker's wait between two looks at an empty queue.
IDLE_WAIT_SECONDS = 0.2

# The longest a wait may last before the stop flag is looked at again.
_WAIT_SLICE_SECONDS = 0.1

DEFAULT_HEARTBEAT_SECONDS = 2.0


def fibonacci(n: int) -> int:
    """fib(0) = 0, fib(1) = 1, fib(n) = fib(n - 1) + fib(n - 2)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def heartbeat_seconds() -> float:
    """The scheduler's period: ``$DEMO_HEARTBEAT_SECONDS`` (a positive number), default 2."""
    raw = os.environ.get("DEMO_HEARTBEAT_SECONDS", "").strip()
    if not raw:
        return DEFAULT_HEARTBEAT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"DEMO_HEARTBEAT_SECONDS must be a positive number, got {raw!r}")
    return seconds


class StopFlag:
    """Set by SIGTERM (and SIGINT, for Ctrl-C when a target is run by hand); read by the loops."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def install(self) -> StopFlag:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        # Only set the flag: anything more (I/O, locks) is unsafe in a handler.
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early (within a slice) once stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _WAIT_SLICE_SECONDS))


def run_worker() -> None:
    """Companion target: run queued jobs, oldest first, until SIGTERM."""
    stop = StopFlag().install()
    pid = os.getpid()
    print(f"worker {pid}: started, database {db.db_path()}", flush=True)
    with closing(db.connect()) as conn:
        while not stop.requested:
            job = db.claim_next_job(conn, pid)
            if job is None:
                stop.wait(IDLE_WAIT_SECONDS)
                continue
            # A job is short, so a stop request waits for it to finish.
            result = fibonacci(job.n)
            db.finish_job(conn, job.id, result)
            print(f"worker {pid}: job {job.id} n={job.n} -> {result}", flush=True)
    print(f"worker {pid}: {stop.signal_name or 'stop'} received, exiting", flush=True)


def run_scheduler() -> None:
    """Companion target: write a heartbeat every ``$DEMO_HEARTBEAT_SECONDS`` until SIGTERM."""
    stop = StopFlag().install()
    pid = os.getpid()
    interval = heartbeat_seconds()
    print(f"scheduler {pid}: started, heartbeat every {interval:g}s", flush=True)
    with closing(db.connect()) as conn:
        next_beat = time.monotonic()
        while not stop.requested:
            now = time.monotonic()
            if now < next_beat:
                stop.wait(next_beat - now)
                continue
            beat = db.record_heartbeat(conn, pid)
            stamp = time.strftime("%H:%M:%S", time.localtime(beat.at))
            print(f"scheduler {pid}: heartbeat #{beat.count} at {stamp}", flush=True)
            # Keep a steady rhythm, but don't fire a burst to catch up after a stall.
            next_beat = max(next_beat + interval, now)
    print(f"scheduler {pid}: {stop.signal_name or 'stop'} received, exiting", flush=True)
