"""Settings from the environment, and each process's own Redis connection."""

from __future__ import annotations

import os

from redis import Redis

# The one queue of the example: the web app and the scheduler enqueue into it,
# the worker companions take jobs from it.
QUEUE_NAME = "default"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TICK_SECONDS = 10.0

_connection: Redis | None = None
_connection_pid: int | None = None


def redis_url() -> str:
    """``$REDIS_URL``, default ``redis://127.0.0.1:6379/0``."""
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def tick_seconds() -> float:
    """The scheduler's period: ``$RQ_EXAMPLE_TICK_SECONDS``, a positive number (default 10)."""
    raw = os.environ.get("RQ_EXAMPLE_TICK_SECONDS", "").strip()
    if not raw:
        return DEFAULT_TICK_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"RQ_EXAMPLE_TICK_SECONDS must be a positive number, got {raw!r}")
    return seconds


def redis() -> Redis:
    """This process's Redis client, made on first use.

    Made per process, never at import time: the master imports this module and
    then forks the HTTP workers and the companions, and each of them must have
    connections of its own.
    """
    global _connection, _connection_pid
    if _connection is None or _connection_pid != os.getpid():
        _connection = Redis.from_url(redis_url())
        _connection_pid = os.getpid()
    return _connection
