"""The job every workload runs, and where it records that it ran.

A job is given a token and a duration: it writes ``TOKEN.started`` in
``$COMPANION_STATE`` (the state directory of the test's Server), works for that long, then writes
``TOKEN.done`` with the pid that ran it. The test reads the files, so "the job
completed" is checked, never assumed, whichever process or library ran it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ["COMPANION_STATE"])


def redis_url() -> str:
    return os.environ["WL_REDIS_URL"]


def record(token: str, seconds: float = 0.0) -> int:
    """The job: mark it started, work ``seconds``, mark it done; returns the pid."""
    state = state_dir()
    (state / f"{token}.started").write_text(str(os.getpid()))
    # time.sleep() is restarted after a signal handler returns (PEP 475), so a
    # warm shutdown that waits for this job really waits the whole duration.
    time.sleep(seconds)
    (state / f"{token}.done").write_text(str(os.getpid()))
    return os.getpid()
