"""The event stream: every companion state change, as it happens.

The supervisor calls its ``on_change`` listeners with a ``ChangeEvent`` each
time a record's state changes (supervisor.apply); ``ChangeFeed`` is the
listener behind ``{"cmd": "events"}``: it hands each event, as one JSON line,
to the control connections that subscribed. It knows no socket: a
subscriber is a responder (server.Responder) with ``push`` and ``closed``,
as a ``tail -f`` follower is.

A subscriber never slows the manager: ``push`` appends to the connection's
output buffer and returns; one that stops reading is dropped once
``SUBSCRIBER_BUFFER`` bytes wait for it (docs/control.md gives the size).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Bytes of events that may wait for one subscriber in the manager (on top of
# what the kernel's socket buffer holds) before it is dropped: an event line
# is 100 to 150 bytes, so about 400 to 600 changes.
SUBSCRIBER_BUFFER = 64 * 1024


@dataclass(frozen=True)
class ChangeEvent:
    """One state change of one companion.

    ``time`` is the wall clock (seconds since the epoch) at the change;
    ``pid`` the process the companion has now, or, for a change into a state
    without a process, the one it had; ``exit`` ({"code": N} or
    {"signal": "SIGTERM"}, with "pid") only for a change caused by an exit.
    """

    time: float
    companion: str
    group: str
    previous: str
    state: str
    pid: int | None
    exit: dict | None = None

    def as_json(self) -> dict:
        line = {"time": round(self.time, 3), "companion": self.companion,
                "previous": self.previous, "state": self.state, "pid": self.pid}
        if self.exit is not None:
            line["exit"] = self.exit
        return line


class ChangeFeed:
    """The subscribers of the event stream, each with the names it asked for."""

    def __init__(self) -> None:
        # (names or group names; empty: every companion, responder)
        self.subscribers: list[tuple[frozenset[str], object]] = []

    def subscribe(self, names: Iterable[str], responder) -> None:
        self.subscribers.append((frozenset(names), responder))

    def publish(self, event: ChangeEvent) -> None:
        if not self.subscribers:
            return
        reply = {"ok": True, "event": event.as_json()}
        live = []
        for names, responder in self.subscribers:
            if responder.closed:
                continue
            if not names or event.companion in names or event.group in names:
                responder.push(reply, limit=SUBSCRIBER_BUFFER)
            if not responder.closed:  # a push over the limit drops it
                live.append((names, responder))
        self.subscribers = live
