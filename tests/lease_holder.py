"""A host's lease loop in miniature, for the partition tests (tests/netns.py).

    python tests/lease_holder.py URL NAME OWNER TTL TIMEOUT LOG

It does at the lease level what a companion manager and its keeper do: ask
for the lease every TTL/6 while another host holds it; once granted, "run
the instance" after the lock-delay; renew every TTL/3; and keep the holder's
own deadline, ``t0 + TTL`` where t0 is the monotonic time taken before the
call that last granted or renewed the lease. The instance "stops" as soon as
a call could outlast the deadline (now + TIMEOUT + MARGIN), whatever the
service says or fails to say, the rule the manager keeps with stop_timeout.
On SIGTERM it stops, releases and exits.

Each event is a line of LOG: ``MONOTONIC EVENT TOKEN DEADLINE``, where EVENT
is granted, start, renewed, stop, lost, busy, unavailable or released. The
monotonic clock is the machine's, the same in every namespace, so the test
can put the lines of all hosts on one time line (see ``read_log``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise

# A call started with less than TIMEOUT + MARGIN left could return after
# the deadline on a loaded machine: the instance stops before it is made.
MARGIN_OF_TTL = 0.15


@dataclass
class Event:
    at: float
    owner: str
    kind: str
    token: int
    deadline: float


@dataclass
class Tenure:
    """One run of the instance: from start to stop, under one token."""

    owner: str
    token: int
    granted: float
    start: float | None = None
    stop: float | None = None
    deadline: float = 0.0  # the last deadline the holder reckoned
    released: bool = False
    events: list[Event] = field(default_factory=list)


def read_log(path: str, owner: str) -> list[Event]:
    events = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4:
                    events.append(Event(float(parts[0]), owner, parts[1], int(parts[2]),
                                        float(parts[3])))
    except FileNotFoundError:
        pass
    return events


def tenures(events: list[Event]) -> list[Tenure]:
    """Every tenure of every host, in order of grant."""
    found: dict[tuple[str, int], Tenure] = {}
    for event in sorted(events, key=lambda e: e.at):
        key = (event.owner, event.token)
        if event.kind == "granted":
            found[key] = Tenure(event.owner, event.token, event.at, deadline=event.deadline)
        tenure = found.get(key)
        if tenure is None:
            continue
        tenure.events.append(event)
        if event.kind in ("granted", "renewed"):
            tenure.deadline = max(tenure.deadline, event.deadline)
        elif event.kind == "start":
            tenure.start = event.at
        elif event.kind == "stop":
            tenure.stop = event.at
        elif event.kind == "released":
            tenure.released = True
    return sorted(found.values(), key=lambda t: t.granted)


def running(events: list[Event]) -> list[Tenure]:
    return [t for t in tenures(events) if t.start is not None and t.stop is None]


def violations(events: list[Event]) -> list[str]:
    """What breaks the lease's promise in these events (empty when nothing):
    two instances at once, an instance past its holder's deadline, a grant
    before the previous holder's deadline (unless it released)."""
    found = []
    all_tenures = tenures(events)
    for t in all_tenures:
        if t.start is not None and t.stop is not None and t.stop > t.deadline:
            found.append(f"{t.owner} token {t.token} stopped {t.stop - t.deadline:.3f}s "
                         "after its deadline")
    ran = [t for t in all_tenures if t.start is not None]
    for earlier, later in pairwise(ran):
        end = earlier.stop if earlier.stop is not None else float("inf")
        if later.start < end:
            found.append(f"{later.owner} token {later.token} started while {earlier.owner} "
                         f"token {earlier.token} ran")
        if not earlier.released and later.granted < earlier.deadline:
            found.append(f"{later.owner} token {later.token} was granted "
                         f"{earlier.deadline - later.granted:.3f}s before the deadline of "
                         f"{earlier.owner} token {earlier.token}")
    for earlier, later in pairwise(all_tenures):
        if later.token <= earlier.token:
            found.append(f"token {later.token} of {later.owner} does not grow from "
                         f"{earlier.token}")
    return found


def main(argv: list[str]) -> int:
    from gunicorn_companion.lease import Acquired, LeaseUnavailable, open_backend

    url, name, owner, ttl, timeout, log_path = argv
    ttl, timeout = float(ttl), float(timeout)
    margin = MARGIN_OF_TTL * ttl
    log = open(log_path, "a", buffering=1)
    terminated = []
    signal.signal(signal.SIGTERM, lambda *_: terminated.append(1))

    def note(kind: str, token: int = 0, deadline: float = 0.0) -> None:
        log.write(f"{time.monotonic():.6f} {kind} {token} {deadline:.6f}\n")

    backend = open_backend(url, timeout)
    token = 0
    deadline = start_at = 0.0
    running = False
    next_call = time.monotonic()

    def stop(kind: str | None = None) -> None:
        nonlocal running, token
        if running:
            note("stop", token, deadline)
            running = False
        if kind:
            note(kind, token, deadline)
        token = 0

    while not terminated:
        now = time.monotonic()
        if token and now + timeout + margin >= deadline:
            stop("lost")  # our own clock says so, answer or no answer
        if token and not running and now >= start_at:
            running = True
            note("start", token, deadline)
        if now >= next_call:
            t0 = time.monotonic()
            try:
                if token:
                    if backend.renew(name, token, ttl):
                        deadline = t0 + ttl
                        note("renewed", token, deadline)
                        next_call = t0 + ttl / 3
                    else:
                        stop("lost")
                        next_call = time.monotonic()
                else:
                    reply = backend.try_acquire(name, owner, ttl)
                    if isinstance(reply, Acquired):
                        token, deadline = reply.token, t0 + ttl
                        start_at = time.monotonic() + reply.delay
                        note("granted", token, deadline)
                        next_call = t0 + ttl / 3
                    else:
                        note("busy", reply.holder.token if reply.holder else 0)
                        next_call = time.monotonic() + ttl / 6
            except LeaseUnavailable:
                note("unavailable", token, deadline)
                next_call = time.monotonic() + (ttl / 12 if token else ttl / 6)
            continue
        wake = [next_call]
        if token:
            wake.append(deadline - timeout - margin)
            if not running:
                wake.append(start_at)
        # a signal (SIGTERM) interrupts the sleep: PEP 475 retries it, but
        # our handler has recorded it and the loop ends at its next turn
        time.sleep(max(0.0, min(min(wake) - time.monotonic(), 0.05)))
    if token:
        held = token
        stop()
        try:
            backend.release(name, held)
            note("released", held, deadline)
        except LeaseUnavailable:
            pass
    backend.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    sys.exit(main(sys.argv[1:]))
