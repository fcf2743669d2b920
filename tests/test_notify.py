"""Tests for notify.py, what a companion tells its manager: ready() and heartbeat().

No manager, no processes, no sleeps: the "manager" is the receiving end of a
real datagram socketpair whose sending end's fd is put in the environment, as
the manager does for its companions. The module caches its channel per
process, so every test starts from a fresh cache (``_fd_pid`` None).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import time

import pytest

from gunicorn_companion import notify
from gunicorn_companion.notify import NOTIFY_FD_ENV, WATCHDOG_ENV

PID = os.getpid()
READY = f"ready {PID}".encode()
HEARTBEAT = f"heartbeat {PID}".encode()


@pytest.fixture
def fresh(monkeypatch):
    """notify as a newly forked companion sees it: nothing looked up or sent yet."""
    monkeypatch.setattr(notify, "_fd_pid", None)
    monkeypatch.setattr(notify, "_fd", None)
    monkeypatch.setattr(notify, "_last_heartbeat", 0.0)
    monkeypatch.setattr(notify, "_heartbeat_every", 1.0)
    monkeypatch.delenv(NOTIFY_FD_ENV, raising=False)
    monkeypatch.delenv(WATCHDOG_ENV, raising=False)
    return monkeypatch


@pytest.fixture
def channel(fresh):
    """(manager's end, companion's end) of a datagram socketpair; the
    companion's end is announced in the environment."""
    manager_end, companion_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager_end.setblocking(False)
    fresh.setenv(NOTIFY_FD_ENV, str(companion_end.fileno()))
    yield manager_end, companion_end
    manager_end.close()
    companion_end.close()


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on the (non-blocking) socket."""
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


def fill(companion_end: socket.socket) -> int:
    """Make the companion's end non-blocking, as the manager does, and send
    until the manager's end can queue no more."""
    companion_end.setblocking(False)
    for count in range(1_000_000):
        try:
            companion_end.send(b"filler")
        except BlockingIOError:
            return count
    raise AssertionError("the socket never filled up")


@contextlib.contextmanager
def must_not_block(seconds: float = 5.0):
    """Fail instead of hanging if the body blocks."""
    def expired(signum, frame):
        raise AssertionError(f"blocked for {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- outside a manager --------------------------------------------------------------


CALLS = [
    pytest.param(notify.ready, id="ready"),
    pytest.param(notify.heartbeat, id="heartbeat"),
    pytest.param(lambda: [notify.heartbeat() for _ in range(10_000)], id="heartbeat-loop"),
    pytest.param(lambda: [notify.ready(), notify.ready(), notify.heartbeat()], id="mixed"),
]


@pytest.mark.parametrize("call", CALLS)
def test_outside_a_manager_every_call_is_a_no_op(fresh, call):
    call()
    assert notify._fd is None
    assert notify.send("ready") is False
    assert notify._last_heartbeat == 0.0  # nothing was sent


@pytest.mark.parametrize("value", ["", "not-a-number", "3.5", " "])
@pytest.mark.parametrize("call", CALLS)
def test_unusable_fd_variable_is_a_no_op(fresh, value, call):
    fresh.setenv(NOTIFY_FD_ENV, value)
    call()
    assert notify._fd is None
    assert notify.send("heartbeat") is False


@pytest.mark.parametrize("call", CALLS)
def test_closed_fd_does_not_raise(fresh, call):
    # an fd number past the process's limit is certainly not open (EBADF)
    fresh.setenv(NOTIFY_FD_ENV, str(resource.getrlimit(resource.RLIMIT_NOFILE)[0] + 10))
    call()
    assert notify.send("ready") is False


# -- under a manager ------------------------------------------------------------------


def test_ready_sends_exactly_ready_and_the_pid(channel):
    manager_end, _ = channel
    assert notify.ready() is None
    assert received(manager_end) == [READY]


def test_each_ready_is_sent(channel):
    manager_end, _ = channel
    for _ in range(3):
        notify.ready()
    assert received(manager_end) == [READY] * 3


def test_first_heartbeat_is_sent_at_once(channel):
    manager_end, _ = channel
    notify.heartbeat()
    assert received(manager_end) == [HEARTBEAT]


@pytest.mark.parametrize(
    "watchdog, every",
    [(None, 1.0), ("4", 1.0), ("20", 5.0), ("2", 0.5), ("1", 0.25), ("bogus", 1.0)],
)
def test_heartbeat_in_a_tight_loop_is_rate_limited(channel, fresh, watchdog, every):
    manager_end, _ = channel
    if watchdog is not None:
        fresh.setenv(WATCHDOG_ENV, watchdog)
    started = time.monotonic()
    for _ in range(10_000):
        notify.heartbeat()
    elapsed = time.monotonic() - started
    assert notify._heartbeat_every == every
    got = received(manager_end)
    assert set(got) == {HEARTBEAT}
    # the first call sends; every further datagram needs `every` seconds to pass
    # (relative to the time the loop took, so a slow machine cannot fail it)
    assert 1 <= len(got) <= 1 + int(elapsed / every)


def test_ready_is_not_rate_limited_by_heartbeats(channel):
    manager_end, _ = channel
    for _ in range(100):
        notify.heartbeat()
    notify.ready()
    assert received(manager_end) == [HEARTBEAT, READY]


def test_heartbeat_goes_out_again_once_the_period_has_passed(channel):
    manager_end, _ = channel
    notify.heartbeat()
    notify.heartbeat()
    assert received(manager_end) == [HEARTBEAT]
    # as if a second had passed since the last one was sent
    notify._last_heartbeat = time.monotonic() - notify._heartbeat_every
    notify.heartbeat()
    notify.heartbeat()
    assert received(manager_end) == [HEARTBEAT]


def test_channel_is_looked_up_once_per_process(channel, fresh):
    manager_end, companion_end = channel
    notify.ready()
    # the environment changing under a running companion does not move its channel
    fresh.setenv(NOTIFY_FD_ENV, "not-a-number")
    notify.ready()
    assert received(manager_end) == [READY, READY]
    # a new process (as after a fork) looks again
    notify._fd_pid = None
    notify.ready()
    assert received(manager_end) == []
    assert notify._fd is None


# -- a full channel ------------------------------------------------------------------


def test_full_channel_neither_blocks_nor_raises(channel):
    manager_end, companion_end = channel
    assert fill(companion_end) > 0
    # A blocking send would hang for ever: any deadline tells the two apart,
    # so take one no loaded machine comes near.
    with must_not_block(60.0):
        for _ in range(1000):
            notify.ready()
        for _ in range(10_000):
            notify.heartbeat()
        assert notify.send("heartbeat") is False
    # nothing of ours got in: only the filler is queued
    assert set(received(manager_end)) == {b"filler"}


def test_dropped_heartbeat_is_sent_at_the_next_call(channel):
    manager_end, companion_end = channel
    fill(companion_end)
    with must_not_block():
        notify.heartbeat()  # dropped: the manager is busy
    assert notify._last_heartbeat == 0.0  # not counted as sent
    assert set(received(manager_end)) == {b"filler"}
    # the manager caught up: the very next heartbeat goes out, without waiting a period
    notify.heartbeat()
    assert received(manager_end) == [HEARTBEAT]


def test_ready_after_a_full_channel_drains(channel):
    manager_end, companion_end = channel
    fill(companion_end)
    with must_not_block():
        notify.ready()
    received(manager_end)
    notify.ready()
    assert received(manager_end) == [READY]

