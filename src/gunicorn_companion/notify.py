"""What a companion tells its manager: ``ready()`` and ``heartbeat()``.

Light on purpose (standard library only): companions import it at will.
Messages are datagrams on one socket the manager shares with every companion
(one fd for 500 companions, not 500 pipes). The manager made it non-blocking,
so a busy manager can never block a companion: at worst a heartbeat is
dropped, and the next one is sent anyway. ``heartbeat()`` sends at most a few times per
watchdog period, so calling it in a tight loop costs a clock read, not a
system call.
"""

from __future__ import annotations

import os
import time

NOTIFY_FD_ENV = "GUNICORN_COMPANION_NOTIFY_FD"
WATCHDOG_ENV = "GUNICORN_COMPANION_WATCHDOG"
FENCING_TOKEN_ENV = "GUNICORN_COMPANION_FENCING_TOKEN"

_fd: int | None = None
_fd_pid: int | None = None
_last_heartbeat = 0.0
_heartbeat_every = 1.0


def _channel() -> int | None:
    """The notify fd, looked up once per process (a fork re-reads it)."""
    global _fd, _fd_pid, _heartbeat_every
    pid = os.getpid()
    if _fd_pid != pid:
        _fd_pid, _fd = pid, None
        try:
            _fd = int(os.environ[NOTIFY_FD_ENV])
        except (KeyError, ValueError):
            pass  # not under a companion manager: every call is a harmless no-op
        watchdog = os.environ.get(WATCHDOG_ENV)
        try:
            _heartbeat_every = float(watchdog) / 4 if watchdog else 1.0
        except ValueError:
            _heartbeat_every = 1.0
    return _fd


def send(what: str) -> bool:
    """Send one message; False when there is no manager or it was dropped."""
    fd = _channel()
    if fd is None:
        return False
    try:
        os.write(fd, f"{what} {os.getpid()}".encode())
        return True
    except OSError:
        return False


def ready() -> None:
    """This companion is ready: RUNNING now, without waiting for startsecs."""
    send("ready")


def heartbeat() -> None:
    """This companion is alive (see ``watchdog_timeout``); cheap to call often."""
    global _last_heartbeat
    if _channel() is None:
        return
    now = time.monotonic()
    if now - _last_heartbeat >= _heartbeat_every:
        if send("heartbeat"):
            _last_heartbeat = now


def fencing_token() -> int | None:
    """This fleet singleton's fencing token (None outside one).

    It grows from one holder of the lease to the next, across restarts of
    the lease service too: pass it with each write the companion makes to a
    shared store, and let the store refuse a token lower than the highest it
    has seen. A holder that was paused past its lease (a VM pause, a long GC)
    is stopped on waking, but may write once in between: the token is what
    turns that write away (docs/fleet.md).
    """
    value = os.environ.get(FENCING_TOKEN_ENV)
    try:
        return int(value) if value else None
    except ValueError:
        return None
