"""Fleet singletons, the manager's side: when a companion may run, and when
it must be gone.

The keeper (keeper.py) does the talking to the lease service; this module
turns its news into lifecycle events (LeaseGranted, LeaseLost, LeaseNote)
and owns the deadlines that make the lease safe. docs/fleet.md gives the
argument; the rules it rests on are upheld here:

1. A lease is ours until ``t0 + ttl`` by our own monotonic clock, where t0
   was read before the acquiring or renewing call was sent (the service
   counts its TTL from a later moment, so its expiry is never earlier).
2. At ``t0 + ttl - (stop_timeout + kill grace + margin)`` without a newer
   renewal the companion begins stopping, so it is gone, SIGKILL included,
   before ``t0 + ttl``. ``fleet_faults`` (spec.py) refuses a config where
   that point comes before half the TTL.
3. A manager that finds ``t0 + ttl`` already past (it was frozen: SIGSTOP, a
   VM pause) SIGKILLs the companion's group at once, before it reads any
   news from the keeper: another host may run it already.
4. A lease with a lock-delay (the service could not tell whether the last
   holder is certainly gone) lets the companion start only at ``t0 + delay``.
5. The lease is released only once the companion has exited: a graceful
   stop hands over at once, and never while our process still runs.

Nothing here blocks: the keeper is a child process behind a socketpair.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass

from . import lifecycle as lc
from .keeper import keeper_main, owner_name
from .spec import LEASE_KILL_GRACE, lease_stop_budget
from .states import State

# A keeper that died is replaced after this long (its leases' deadlines run on).
KEEPER_RESTART_DELAY = 0.25
# How long a manager on its way out waits for the keeper to release its leases.
KEEPER_EXIT_WAIT = 5.0


@dataclass
class Lease:
    """What this manager knows of one fleet singleton's lease."""

    name: str
    asked: bool = False  # the keeper was told to want it
    token: int | None = None  # ours, while we hold it
    valid_until: float | None = None  # t0 + ttl of the latest grant or renewal
    start_at: float | None = None  # the lock-delay's end, for last_token
    last_token: int | None = None  # the token start_at is for (kept across a forget)
    granted: bool = False  # LeaseGranted sent to the record for this token
    stopping: bool = False  # LeaseLost sent for this token
    holder: str | None = None  # another holder's owner (host:pid)
    holder_token: int | None = None
    why: str | None = None  # why the service cannot be asked


class Fleet:
    """The manager's fleet leases, driven by the supervisor and the keeper's news."""

    def __init__(self, ttl: float, link, *, apply: Callable[[str, lc.Event], None],
                 records: Callable[[], dict], now: Callable[[], float], log,
                 owner: str | None = None):
        self.ttl = ttl
        self.link = link  # .send(*words); .alive(); .restart()
        self.apply = apply
        self.records = records
        self.now = now
        self.log = log
        self.owner = owner or owner_name()
        self.leases: dict[str, Lease] = {}
        self.restart_at: float | None = None  # when to replace a dead keeper

    # -- what the supervisor tells us -------------------------------------------------

    def sync(self, name: str) -> None:
        """After each step of a record: want, keep or give up its lease."""
        record = self.records().get(name)
        lease = self.leases.get(name)
        if lease is not None and lease.token is not None and record is not None and (
                record.wanted and not lease.granted):
            self._grant_if_due(lease, record)
        if record is None or not record.spec.fleet:
            if lease is not None:
                self._give_up(lease)
                del self.leases[name]
            return
        lease = lease or self.leases.setdefault(name, Lease(name))
        wants = record.wanted and record.state != State.FATAL
        if wants and lease.token is None and not lease.asked:
            lease.asked = True
            self.link.send("want", name)
        elif not wants and record.pid is None:
            self._give_up(lease)

    def _give_up(self, lease: Lease) -> None:
        """Our companion is gone and not wanted: release the lease, or stop
        asking for it."""
        if lease.token is not None:
            self.log.info("Companion %r: releasing its fleet lease (token %s)",
                          lease.name, lease.token)
            self.link.send("release", lease.name, lease.token)
            self._forget(lease)
            record = self.records().get(lease.name)
            if record is not None and record.leased:
                # a later start must wait for a new grant, not spawn on this one
                self.apply(lease.name, lc.LeaseLost(quick=False, reason="fleet lease released"))
        elif lease.asked:
            self.link.send("unwant", lease.name)
        lease.asked = False

    def _forget(self, lease: Lease) -> None:
        lease.token = lease.valid_until = None
        lease.granted = lease.stopping = False

    # -- the keeper's news -----------------------------------------------------------------

    def news(self, line: str) -> None:
        # rule 3: deadlines first. Woken from a freeze, a lease already past
        # its end kills the companion before any news is believed.
        self.check(self.now())
        words = line.split(" ")
        verb, args = words[0], words[1:]
        lease = self.leases.get(args[0]) if args else None
        if lease is None:
            return  # a companion removed meanwhile; its lease was given up
        try:
            if verb == "granted":
                self._granted(lease, int(args[1]), float(args[2]), float(args[3]))
            elif verb == "renewed":
                if int(args[1]) == lease.token:
                    lease.valid_until = max(lease.valid_until, float(args[2]) + self.ttl)
                    lease.why = None
            elif verb == "busy":
                self._busy(lease, int(args[1]), " ".join(args[2:]))
            elif verb == "lost":
                if int(args[1]) == lease.token:
                    self._lose(lease, "its fleet lease was taken or lost by the lease service")
            elif verb == "unavailable":
                self._unavailable(lease, " ".join(args[1:]))
        except (IndexError, ValueError):
            self.log.error("Lease keeper said something unreadable: %r", line)
        self.check(self.now())  # a renewal may let a delayed lease be granted now

    def _granted(self, lease: Lease, token: int, delay: float, t0: float) -> None:
        record = self.records().get(lease.name)
        if lease.token != token:
            # an adoption of the token we had keeps its lock-delay
            start_at = t0 + delay
            if lease.start_at is not None and lease.last_token == token:
                start_at = max(start_at, lease.start_at)
            lease.start_at = start_at
            lease.granted = lease.stopping = False
        lease.token, lease.last_token = token, token
        lease.valid_until = max(lease.valid_until or 0.0, t0 + self.ttl)
        lease.holder = lease.holder_token = lease.why = None
        if record is None or not record.wanted:
            if record is None or record.pid is None:
                self._give_up(lease)  # stopped meanwhile: not needed
            return
        if delay > 0:
            self.log.warning("Companion %r: fleet lease taken (token %s); the lease service "
                             "had no record of it (first use, or it lost its data), so it "
                             "starts after a lock-delay of %gs", lease.name, token, delay)
            self.apply(lease.name, lc.LeaseNote(
                f"fleet lease lock-delay of {delay:g}s (token {token}): the lease service had "
                "no record of it"))
        else:
            self.log.info("Companion %r: fleet lease taken (token %s)", lease.name, token)
        self.check(self.now())

    def _busy(self, lease: Lease, token: int, owner: str) -> None:
        if lease.token is not None:
            return
        lease.holder, lease.holder_token, lease.why = owner, token or None, None
        self.apply(lease.name, lc.LeaseNote(
            f"fleet lease held by {owner}" + (f" (token {token})" if token else "")))

    def _unavailable(self, lease: Lease, why: str) -> None:
        lease.why = why
        if lease.token is None:
            lease.holder = lease.holder_token = None
            self.apply(lease.name, lc.LeaseNote(
                f"fleet lease; the lease service cannot be asked: {why}"))

    def _lose(self, lease: Lease, reason: str) -> None:
        """The lease is not ours any more (or soon will not be): the companion
        stops, and the keeper stops renewing but does not release, since our
        process may still be stopping. It keeps asking; it takes back a lease
        still ours (same owner, same token) and its lock-delay."""
        now = self.now()
        record = self.records().get(lease.name)
        remaining = (lease.valid_until or now) - now
        # graceful while stop_timeout and the kill still fit before the end
        quick = record is not None and remaining < record.spec.stop_timeout + LEASE_KILL_GRACE
        if lease.token is not None:
            self.link.send("forget", lease.name, lease.token)
        self._forget(lease)
        lease.asked = True
        if record is not None:
            self.apply(lease.name, lc.LeaseLost(quick=quick, reason=reason))

    # -- deadlines ---------------------------------------------------------------------

    def _stop_at(self, lease: Lease) -> float | None:
        record = self.records().get(lease.name)
        if lease.valid_until is None or record is None:
            return None
        return lease.valid_until - lease_stop_budget(record.spec.stop_timeout)

    def next_deadline(self) -> float | None:
        now = self.now()
        times = [self.restart_at] if self.restart_at is not None else []
        for lease in self.leases.values():
            if lease.token is None:
                continue
            times.append(lease.valid_until)
            if not lease.granted and lease.start_at is not None and lease.start_at > now:
                # once past, the grant waits for news (a renewal, a start),
                # which checks again: a past time here would spin the loop
                times.append(lease.start_at)
            stop_at = self._stop_at(lease)
            if stop_at is not None and lease.granted and not lease.stopping:
                times.append(stop_at)
        return min(times) if times else None

    def check(self, now: float) -> None:
        """Every lease deadline that has come; first thing after any wake."""
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self._restart_keeper()
        for lease in list(self.leases.values()):
            if lease.token is None:
                continue
            record = self.records().get(lease.name)
            if now >= lease.valid_until:
                # rule 3: past its end by our clock, we may have been frozen:
                # no graceful stop, and no question to the service first
                self.log.error("Companion %r: its fleet lease (token %s) expired %.3gs ago "
                               "by this host's clock", lease.name, lease.token,
                               now - lease.valid_until)
                self._lose(lease, "its fleet lease expired")
                continue
            if not lease.granted:
                self._grant_if_due(lease, record)
            elif lease.granted and not lease.stopping and now >= self._stop_at(lease):
                # rule 2: no renewal came in time
                lease.stopping = True
                self.log.error("Companion %r: its fleet lease (token %s) was not renewed; "
                               "stopping it before the lease can expire (%.3gs left)",
                               lease.name, lease.token, lease.valid_until - now)
                self._lose(lease, "its fleet lease could not be renewed in time"
                           + (f" ({lease.why})" if lease.why else ""))

    def _grant_if_due(self, lease: Lease, record) -> None:
        """The companion may start: the lease is ours, its lock-delay over, and
        enough of it left to stop in time."""
        now = self.now()
        if (record is not None and record.wanted and now >= (lease.start_at or now)
                and now < self._stop_at(lease)):
            lease.granted = True
            self.apply(lease.name, lc.LeaseGranted())

    # -- the keeper process ------------------------------------------------------------

    def keeper_gone(self) -> None:
        """The keeper died: our leases are not renewed any more (their
        deadlines hold), and a new keeper comes in a moment."""
        self.log.error("Lease keeper exited; starting a new one in %gs", KEEPER_RESTART_DELAY)
        self.restart_at = self.now() + KEEPER_RESTART_DELAY

    def _restart_keeper(self) -> None:
        self.link.restart()
        for lease in self.leases.values():
            if lease.token is not None:
                self.link.send("hold", lease.name, lease.token)
            elif lease.asked:
                self.link.send("want", lease.name)

    # -- status --------------------------------------------------------------------------

    def status(self, name: str, now: float) -> dict | None:
        """The ``lease`` field of a fleet companion's status entry."""
        lease = self.leases.get(name)
        if lease is None:
            return None
        if lease.token is not None:
            delayed = not lease.granted and lease.start_at is not None and now < lease.start_at
            return {"state": "delay" if delayed else "held", "token": lease.token,
                    "holder": self.owner,
                    "expires_in": round(lease.valid_until - now, 3),
                    "why": (f"lock-delay: starts in {lease.start_at - now:.3g}s" if delayed
                            else lease.why)}
        if lease.why is not None:
            return {"state": "unavailable", "token": None, "holder": None, "expires_in": None,
                    "why": lease.why}
        return {"state": "waiting", "token": lease.holder_token, "holder": lease.holder,
                "expires_in": None, "why": None}

    def token_of(self, name: str) -> int | None:
        """The token a companion may start with: None unless granted."""
        lease = self.leases.get(name)
        return lease.token if lease is not None and lease.granted else None

    def close(self) -> None:
        """On the manager's way out, every companion gone: let the keeper
        release what is still held, and wait (bounded) for it to finish."""
        for lease in self.leases.values():
            self._give_up(lease)
        self.link.close(KEEPER_EXIT_WAIT)


class KeeperLink:
    """The manager's end of the socketpair to its keeper process."""

    def __init__(self, selector: selectors.BaseSelector, host, url: str, ttl: float,
                 on_news: Callable[[str], None], on_gone: Callable[[], None]):
        self.selector = selector
        self.host = host
        self.url = url
        self.ttl = ttl
        self.on_news = on_news
        self.on_gone = on_gone
        self.sock: socket.socket | None = None
        self.pid: int | None = None
        self.buffer = b""
        self.outbox = b""

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        owner = owner_name()
        try:
            self.pid = self.host.spawn_keeper(
                lambda: keeper_main(theirs, self.url, self.ttl, owner),
                close_in_child=ours.close)
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.buffer = self.outbox = b""
        self.selector.register(ours, selectors.EVENT_READ, self._on_readable)
        self.host.child_closers.append(self.close_in_child)

    def restart(self) -> None:
        self._drop()
        try:
            self.start()
        except OSError as exc:
            self.host.log.error("Cannot start the lease keeper: %s", exc)
            self.on_gone()

    def close_in_child(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def send(self, *words) -> None:
        self.outbox += (" ".join(str(w) for w in words) + "\n").encode()
        self._flush()

    def _flush(self) -> None:
        if self.sock is None or not self.outbox:
            return
        try:
            sent = self.sock.send(self.outbox)
        except BlockingIOError:
            return  # the keeper is busy in a call: it reads this after
        except OSError:
            return  # gone: EOF on the read side says so
        self.outbox = self.outbox[sent:]

    def _on_readable(self, key, mask) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop()
            self.on_gone()
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self.on_news(line.decode("utf-8", "replace"))
        self._flush()

    def _drop(self) -> None:
        if self.sock is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            if self.close_in_child in self.host.child_closers:
                self.host.child_closers.remove(self.close_in_child)
            self.sock.close()
            self.sock = None

    def close(self, wait: float) -> None:
        """Tell the keeper to leave and wait for it (its releases), at most ``wait`` s."""
        if self.sock is None:
            return
        self.send("exit")
        sock = self.sock
        self.selector.unregister(sock)
        sock.setblocking(True)
        sock.settimeout(wait)
        try:
            if self.outbox:
                sock.sendall(self.outbox)
            while sock.recv(65536):
                pass  # released/unavailable news: nothing left to act on
        except OSError:
            pass
        sock.close()
        self.sock = None

    def is_keeper(self, pid: int) -> bool:
        return pid == self.pid and pid is not None

