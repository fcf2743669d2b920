"""systemd's notify protocol (sd_notify(3)) for ``Type=notify`` and
``Type=notify-reload`` units, with the companions in the picture.

Gunicorn sends ``READY=1`` as soon as it has bound its sockets, before any
worker or companion exists. Here the master takes ``NOTIFY_SOCKET`` out of
the environment first (so Gunicorn's early message never goes, and no
worker or companion inherits the variable) and says ``READY=1`` once the
HTTP workers are forked and every companion that should run has settled:
RUNNING, or FATAL, so that a broken companion never blocks the start.

Every message goes out from the master, the unit's main process, so the
default ``NotifyAccess=main`` is enough. What the master cannot see (the
companions' states, the manager's loop being alive) the manager writes as
lines on the lifeline pipe it already holds (see arbiter.py), and the master
forwards it: ``status TEXT``, ``settled`` and ``alive``.

Pure message building and parsing, plus one small sender: the call sites in
the master and the manager stay a few lines each.
"""

from __future__ import annotations

import os
import socket
import time

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

# States in which a companion that should run has settled for READY=1.
# STANDBY: a fleet singleton another host runs (loop.readiness).
SETTLED_STATES = frozenset({"RUNNING", "FATAL", "STANDBY"})


# -- pure ------------------------------------------------------------------------


def take_from_environ(environ, pid: int) -> tuple[str | None, float | None]:
    """Remove systemd's variables from ``environ`` and return the notify
    address (an abstract one as ``\\0name``) and the watchdog period in
    seconds (None without one, or when it is meant for another process)."""
    address = environ.pop(NOTIFY_SOCKET_ENV, None) or None
    usec, watchdog_pid = environ.pop(WATCHDOG_USEC_ENV, None), environ.pop(WATCHDOG_PID_ENV, None)
    if address and address.startswith("@"):
        address = "\0" + address[1:]
    period = None
    try:
        if usec and (not watchdog_pid or int(watchdog_pid) == pid) and int(usec) > 0:
            period = int(usec) / 1e6
    except ValueError:
        period = None
    return address, period


def summary(companions: list[tuple[str, str, bool]]) -> str:
    """The STATUS= text for (name, state, wanted) triples: '3/3 companions
    RUNNING', or '2/3 companions RUNNING; rq-default BACKOFF'."""
    counted = [(name, state) for name, state, wanted in companions if wanted]
    running = sum(1 for _, state in counted if state == "RUNNING")
    text = f"{running}/{len(counted)} companion{'' if len(counted) == 1 else 's'} RUNNING"
    others = [f"{name} {state}" for name, state in counted if state != "RUNNING"]
    shown = others[:5] + ([f"{len(others) - 5} more"] if len(others) > 5 else [])
    return "; ".join([text, *shown])


def settled(companions: list[tuple[str, str, bool]]) -> bool:
    """Has every companion that should run settled (RUNNING or FATAL)?"""
    return all(state in SETTLED_STATES for _, state, wanted in companions if wanted)


def parse_news(buffer: bytes) -> tuple[list[str], bytes]:
    """Split the manager's lifeline bytes into whole lines and the rest."""
    *lines, rest = buffer.split(b"\n")
    return [line.decode("utf-8", "replace") for line in lines if line], rest


def reloading_message(monotonic_usec: int) -> str:
    """Type=notify-reload wants the reload's start time with RELOADING=1."""
    return f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}"


# -- the sender --------------------------------------------------------------------


class Notifier:
    """Sends datagrams to systemd's notify socket; never blocks, never raises."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)

    def send(self, message: str) -> bool:
        try:
            self.sock.sendto(message.encode("utf-8"), self.address)
            return True
        except OSError:
            return False  # no listener (systemd restarting?): the next one may pass

    def close(self) -> None:
        self.sock.close()


# -- the master's side ----------------------------------------------------------------


class MasterReadiness:
    """What the master tells systemd, fed by the master loop and the manager's news."""

    def __init__(self, notifier: Notifier, watchdog: float | None, log):
        self.notifier = notifier
        self.watchdog = watchdog
        self.log = log
        self.companions_settled = False
        self.ready_sent = False
        self.last_status = ""
        self.manager_alive_at = time.monotonic()
        self.watchdog_sent_at = 0.0

    @classmethod
    def from_environ(cls, environ, log) -> "MasterReadiness | None":
        address, watchdog = take_from_environ(environ, os.getpid())
        return cls(Notifier(address), watchdog, log) if address else None

    def keepalive_every(self) -> float | None:
        """How often the manager must say it is alive: often enough that a
        master loop turn (up to a second) still leaves a margin."""
        return None if self.watchdog is None else max(0.05, self.watchdog / 4)

    def no_companions(self) -> None:
        """Without a manager there is nothing to wait for or watch."""
        self.companions_settled = True
        self.manager_alive_at = None

    def news(self, lines: list[str]) -> None:
        for line in lines:
            what, _, text = line.partition(" ")
            if what == "settled":
                self.companions_settled = True
            elif what == "status" and text != self.last_status:
                self.last_status = text
                self.notifier.send(f"STATUS={text}")
            if self.manager_alive_at is not None:
                self.manager_alive_at = time.monotonic()  # any line: its loop turns

    def reloading(self) -> None:
        self.ready_sent = False
        self.companions_settled = self.manager_alive_at is None
        self.notifier.send(reloading_message(time.monotonic_ns() // 1000))

    def after_loop_turn(self, workers_up: bool) -> None:
        """Called on every turn of the master loop (at least once a second)."""
        now = time.monotonic()
        if not self.ready_sent and workers_up and self.companions_settled:
            self.ready_sent = True
            self.notifier.send("READY=1")
            self.log.info("Told systemd READY=1: HTTP workers up, companions settled")
        if self.watchdog is None or now - self.watchdog_sent_at < self.watchdog / 2:
            return
        # The master's loop is alive (this runs in it); the manager's counts
        # only while it has said so within one watchdog period.
        if self.manager_alive_at is None or now - self.manager_alive_at < self.watchdog:
            self.watchdog_sent_at = now
            self.notifier.send("WATCHDOG=1")


# -- the manager's side ----------------------------------------------------------------


class ManagerNews:
    """What the manager writes on the lifeline for MasterReadiness."""

    def __init__(self, lifeline: int, keepalive_every: float | None, clock=time.monotonic):
        self.lifeline = lifeline
        self.keepalive_every = keepalive_every
        self.clock = clock
        self.last_status = ""
        self.settled_sent = False
        self.next_keepalive = clock() if keepalive_every else None

    def expect_settle(self) -> None:
        """A reload began: say ``settled`` again once it is."""
        self.settled_sent = False

    def after_loop_turn(self, companions: list[tuple[str, str, bool]]) -> None:
        lines = []
        text = summary(companions)
        if text != self.last_status:
            self.last_status = text
            lines.append(f"status {text}")
        if not self.settled_sent and settled(companions):
            self.settled_sent = True
            lines.append("settled")
        now = self.clock()
        if self.next_keepalive is not None and now >= self.next_keepalive:
            self.next_keepalive = now + self.keepalive_every
            lines.append("alive")
        if lines:
            try:
                # A pipe write of under PIPE_BUF bytes is atomic; a full pipe
                # (a master that stopped reading) drops the news, not the loop.
                os.write(self.lifeline, "".join(f"{line[:400]}\n" for line in lines).encode())
            except (BlockingIOError, BrokenPipeError):
                pass
