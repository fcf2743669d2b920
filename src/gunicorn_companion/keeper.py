"""The keeper: the manager's child that holds the lease service's connection.

Every call to a lease service blocks (for at most its timeout), and the
manager's loop must never block, so the manager forks this small process
(spawn.spawn_keeper) and talks to it over a socketpair, one short line per
message. The keeper is single-threaded and runs nothing but this loop.

Manager -> keeper::

    want NAME              take the lease when it is free; keep trying
    hold NAME TOKEN        a lease we hold (after a keeper restart): renew it
    forget NAME TOKEN      stop renewing it, but do not release it: our
                           companion may still be stopping, so the lease
                           must run out by itself
    release NAME TOKEN     our companion is gone: give the lease up now
    unwant NAME            stop trying to take it
    exit                   leave (after the releases sent before it)

Keeper -> manager (T0 is ``time.monotonic()`` taken *before* the call was
sent: the lease, extended by the service when it handled the call, lasts at
least until T0 + TTL by the holder's clock, which CLOCK_MONOTONIC makes the
manager's clock too)::

    granted NAME TOKEN DELAY T0
    renewed NAME TOKEN T0
    busy NAME TOKEN OWNER           (TOKEN 0, OWNER "?": unreadable holder)
    lost NAME TOKEN                 a renewal found the lease not ours
    unavailable NAME REASON...      the service could not be asked
    released NAME TOKEN

Holders renew every TTL/3; waiters ask again every min(TTL/3, 1 s), so a
released lease is taken within a second.
"""

from __future__ import annotations

import os
import select
import socket
import time

from .lease import Acquired, Busy, LeaseUnavailable, open_backend
from .spec import ConfigError

MAX_LINE = 4096
# the longest pause between two tries of a waiting host
MAX_POLL_INTERVAL = 1.0


def call_timeout(ttl: float) -> float:
    """How long one call to the service may block: short enough that a hung
    renewal leaves time to retry before the holder must start stopping."""
    return max(0.2, min(2.0, ttl / 6))


def renew_interval(ttl: float) -> float:
    return ttl / 3


def poll_interval(ttl: float) -> float:
    return min(MAX_POLL_INTERVAL, ttl / 3)


def retry_interval(ttl: float) -> float:
    """After a failed renewal: ask again soon, the deadline is running."""
    return ttl / 12


class Keeper:
    """The keeper process's state: what it wants, holds, and when it acts next."""

    def __init__(self, sock: socket.socket, url: str, ttl: float, owner: str,
                 clock=time.monotonic):
        self.sock = sock
        self.url = url
        self.ttl = ttl
        self.owner = owner
        self.clock = clock
        self.backend = None
        self.wanted: dict[str, float] = {}  # name -> when to try to take it next
        self.held: dict[str, tuple[int, float]] = {}  # name -> (token, next renewal)
        self.buffer = b""
        self.exiting = False

    def send(self, *words) -> None:
        self.sock.sendall((" ".join(str(w) for w in words) + "\n").encode())

    def _backend(self):
        if self.backend is None:
            try:
                self.backend = open_backend(self.url, call_timeout(self.ttl))
            except ConfigError as exc:  # validated at boot: only a changed environment
                raise LeaseUnavailable(str(exc)) from None
        return self.backend

    # -- commands from the manager -------------------------------------------------

    def command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        verb, args = words[0], words[1:]
        now = self.clock()
        if verb == "want" and len(args) == 1:
            if args[0] not in self.held:
                self.wanted.setdefault(args[0], now)
        elif verb == "hold" and len(args) == 2:
            self.held[args[0]] = (int(args[1]), now)
            self.wanted.pop(args[0], None)
        elif verb == "forget" and len(args) == 2:
            if self.held.get(args[0], (None,))[0] == int(args[1]):
                del self.held[args[0]]
                self.wanted[args[0]] = now  # it is adopted again if still ours
        elif verb == "release" and len(args) == 2:
            self.wanted.pop(args[0], None)
            held = self.held.pop(args[0], None)
            token = int(args[1])
            if held is None or held[0] == token:
                self._release(args[0], token)
        elif verb == "unwant" and len(args) == 1:
            self.wanted.pop(args[0], None)
        elif verb == "exit":
            self.exiting = True

    def _release(self, name: str, token: int) -> None:
        try:
            self._backend().release(name, token)
        except LeaseUnavailable as exc:
            # it runs out by itself within the TTL
            self.send("unavailable", name, exc)
            return
        self.send("released", name, token)

    # -- calls to the service -------------------------------------------------------

    def due(self) -> float | None:
        times = list(self.wanted.values()) + [at for _, at in self.held.values()]
        return min(times) if times else None

    def act(self) -> None:
        """Every acquisition and renewal whose time has come."""
        for name, (token, at) in list(self.held.items()):
            if self.clock() >= at and self.held.get(name) == (token, at):
                self._renew(name, token)
        for name, at in list(self.wanted.items()):
            if self.clock() >= at and name in self.wanted:
                self._acquire(name)

    def _renew(self, name: str, token: int) -> None:
        t0 = self.clock()
        try:
            still = self._backend().renew(name, token, self.ttl)
        except LeaseUnavailable as exc:
            self.held[name] = (token, self.clock() + retry_interval(self.ttl))
            self.send("unavailable", name, exc)
            return
        if still:
            self.held[name] = (token, t0 + renew_interval(self.ttl))
            self.send("renewed", name, token, repr(t0))
        else:
            del self.held[name]
            self.wanted[name] = self.clock()
            self.send("lost", name, token)

    def _acquire(self, name: str) -> None:
        t0 = self.clock()
        try:
            got = self._backend().try_acquire(name, self.owner, self.ttl)
        except LeaseUnavailable as exc:
            self.wanted[name] = self.clock() + poll_interval(self.ttl)
            self.send("unavailable", name, exc)
            return
        if isinstance(got, Acquired):
            del self.wanted[name]
            self.held[name] = (got.token, t0 + renew_interval(self.ttl))
            self.send("granted", name, got.token, repr(float(got.delay)), repr(t0))
        elif isinstance(got, Busy):
            self.wanted[name] = self.clock() + poll_interval(self.ttl)
            holder = got.holder
            self.send("busy", name, holder.token if holder else 0,
                      holder.owner if holder and holder.owner else "?")

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        while not self.exiting:
            due = self.due()
            timeout = None if due is None else max(0.0, due - self.clock())
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if ready:
                data = self.sock.recv(65536)
                if not data:
                    break  # the manager is gone: so are its companions
                self.buffer += data
                while b"\n" in self.buffer:
                    line, _, self.buffer = self.buffer.partition(b"\n")
                    self.command(line.decode("utf-8", "replace"))
                if len(self.buffer) > MAX_LINE:
                    self.buffer = b""
                if self.exiting:
                    break
            self.act()
        if self.backend is not None:
            self.backend.close()
        return 0


def keeper_main(sock: socket.socket, url: str, ttl: float, owner: str) -> int:
    """The keeper process's body (spawn.spawn_keeper forks it)."""
    try:
        return Keeper(sock, url, ttl, owner).run()
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the manager is gone


def owner_name() -> str:
    """Who holds a lease: this host and this manager's pid."""
    return f"{socket.gethostname()}:{os.getpid()}"
