"""What the worker and the scheduler share: the ready line and the idle loop.

A background process here announces itself with one line, then idles like a
real worker between jobs: it wakes every WORKLOAD_TICK seconds (0.05), builds
a little garbage (a job dict with a reference cycle), keeps the last few
hundred jobs, and runs a full ``gc.collect()`` every WORKLOAD_FULL_GC_EVERY
seconds (10; 0 turns it off). The young generations are collected naturally
from the allocations; the periodic full collection stands for the full
collections a long-running process reaches sooner or later, compressed into
the benchmark's time window. A full collection writes to the header of every
tracked object it visits, which is what un-shares copy-on-write pages in a
forked process (and what ``gc.freeze()`` before the fork avoids).

The ready line goes to stdout and, when WORKLOAD_READY_FILE is set, is
appended to that file in one write, so the benchmark reads every process's
line from one place whatever runs it::

    READY name=worker-3 pid=4242 mono=12345.678901 forked=12345.601000

``mono`` is ``time.monotonic()`` (system-wide on Linux) when the line was
written; ``forked`` is when the process was created, from /proc/self/stat
(clock-tick resolution, 10 ms).

SIGTERM exits at once (status 0).
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
import time


def process_start_monotonic() -> float | None:
    """When this process was forked, on the monotonic clock (10 ms resolution)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        start_ticks = int(fields[19])  # field 22 of the whole line: starttime
        now_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        now_mono = time.monotonic()
        return now_mono - (now_boot - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_name(default: str) -> str:
    return (os.environ.get("WORKLOAD_NAME") or os.environ.get("GUNICORN_COMPANION_NAME")
            or default)


def announce(name: str) -> None:
    forked = process_start_monotonic()
    line = (f"READY name={name} pid={os.getpid()} mono={time.monotonic():.6f} "
            f"forked={forked if forked is None else f'{forked:.6f}'}\n")
    sys.stdout.write(line)
    sys.stdout.flush()
    path = os.environ.get("WORKLOAD_READY_FILE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _exit_now(signum, frame):
    raise SystemExit(0)


def idle_loop(name: str, make_job) -> None:
    """Announce, then idle with a little garbage and the GC active. Never returns normally."""
    signal.signal(signal.SIGTERM, _exit_now)
    tick = float(os.environ.get("WORKLOAD_TICK", "0.05"))
    full_every = float(os.environ.get("WORKLOAD_FULL_GC_EVERY", "10"))
    recent: collections.deque = collections.deque(maxlen=300)
    announce(name)
    next_full = time.monotonic() + full_every
    n = 0
    while True:
        time.sleep(tick)
        n += 1
        recent.append(make_job(n))
        if full_every > 0 and time.monotonic() >= next_full:
            gc.collect()
            next_full = time.monotonic() + full_every
