"""Companion gauges and counters to statsd, the way Gunicorn sends its own.

When Gunicorn's ``statsd_host`` is set, the manager sends, every
``companion_statsd_interval`` seconds, for each companion (``<name>`` made
safe for a statsd path):

- ``<prefix>companion.<name>.state``: the state as supervisor's number
  (STOPPED 0, STARTING 10, RUNNING 20, BACKOFF 30, STOPPING 40, FATAL 200),
  one gauge a dashboard can threshold on; ``...up``: 1 when RUNNING;
- ``<prefix>companion.<name>.restarts``: a counter, incremented by the
  restarts since the last send;
- ``<prefix>companion.<name>.memory.rss|pss|uss``: gauges in bytes.

A state change sends that companion's state and up gauges at once, besides,
so that a FATAL reaches a dashboard or an alert within the second rather
than at the next interval.

The prefix is Gunicorn's ``statsd_prefix`` as Gunicorn formats it (a
trailing dot added), ``dogstatsd_tags`` are appended as Gunicorn does
(``|#tags``), ``statsd_host`` may be ``host:port`` or ``unix:PATH`` (a
datagram socket) as in Gunicorn 23 to 27. One metric per datagram, like
Gunicorn.

The socket is non-blocking: a full buffer or an absent statsd loses the
datagram, which is counted and logged once, and never raised or waited for.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from .metrics import MEMORY_KINDS
from .sampling import ProcSampler
from .states import State

STATE_CODES = {State.STOPPED: 0, State.STARTING: 10, State.RUNNING: 20, State.BACKOFF: 30,
               State.STOPPING: 40, State.FATAL: 200}


def gunicorn_prefix(prefix: str) -> str:
    """``statsd_prefix`` as Gunicorn uses it: a trailing dot added (one, even
    when the setting has several), an empty prefix left empty."""
    return re.sub(r"^(.+[^.]+)\.*$", r"\g<1>.", prefix or "")


def metric_name(name: str) -> str:
    """A companion name as one statsd path segment: dots, colons, pipes,
    '#', '@' and spaces would change what the line means."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def lines(entries: list[dict], memory: dict[str, dict[str, int]],
          sent_restarts: dict[str, int], prefix: str) -> list[str]:
    """The statsd lines for one send (pure). ``sent_restarts`` (restarts
    counted so far, by companion) is updated: a counter sends increments."""
    out = []
    for entry in entries:
        base = f"{prefix}companion.{metric_name(entry['name'])}"
        out.extend(state_lines(entry["name"], State(entry["state"]), prefix))
        restarts = entry["restarts"]
        before = sent_restarts.get(entry["name"], 0)
        if restarts > before:
            out.append(f"{base}.restarts:{restarts - before}|c|@1.0")
        sent_restarts[entry["name"]] = restarts
        for kind, value in memory.get(entry["name"], {}).items():
            out.append(f"{base}.memory.{kind}:{value}|g")
    return out


def state_lines(name: str, state: State, prefix: str) -> list[str]:
    """The state and up gauges of one companion (pure)."""
    base = f"{prefix}companion.{metric_name(name)}"
    return [f"{base}.state:{STATE_CODES[state]}|g",
            f"{base}.up:{1 if state == State.RUNNING else 0}|g"]


def with_tags(line: str, tags: str) -> bytes:
    data = line.encode("ascii", "replace")
    return data + b"|#" + tags.encode("ascii", "replace") if tags else data


def open_socket(host) -> socket.socket:
    """A connected non-blocking datagram socket to Gunicorn's ``statsd_host``
    (validated by Gunicorn: a (host, port) pair, or a path for unix:)."""
    if isinstance(host, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target = host
    else:
        info = socket.getaddrinfo(host[0], host[1], type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        target = info[4]
    sock.setblocking(False)
    try:
        sock.connect(target)
    except OSError:
        sock.close()
        raise
    return sock


class StatsdSender:
    """Sends from the manager's loop: ``next_deadline``/``fire_due`` like
    every timer there."""

    def __init__(self, cfg, *, snapshot: Callable[[], list[dict]], log,
                 now: Callable[[], float], interval: float, sampler: ProcSampler | None = None):
        self.host = cfg.statsd_host
        self.prefix = gunicorn_prefix(cfg.statsd_prefix)
        self.tags = getattr(cfg, "dogstatsd_tags", "") or ""
        self.snapshot = snapshot
        self.log = log
        self.now = now
        self.interval = interval
        self.sock: socket.socket | None = None
        self.sent_restarts: dict[str, int] = {}
        self.errors = 0  # datagrams lost to send errors
        self.next_send = now()  # the first at once: statsd learns of us at boot
        # /proc reading bounded as for /metrics (the manager shares one sampler)
        self.sampler = sampler or ProcSampler(now)

    def next_deadline(self) -> float | None:
        return self.next_send

    def fire_due(self, now: float) -> None:
        if now < self.next_send:
            return
        self.next_send = now + self.interval
        entries = self.snapshot()
        figures, _ = self.sampler.sample(entries)
        memory = {name: {kind: f.memory(kind) for kind in MEMORY_KINDS}
                  for name, f in figures.items()}
        for line in lines(entries, memory, self.sent_restarts, self.prefix):
            self.send(with_tags(line, self.tags))

    def changed(self, event) -> None:
        """A supervisor ``on_change`` listener: the new state, sent now."""
        for line in state_lines(event.companion, State(event.state), self.prefix):
            self.send(with_tags(line, self.tags))

    def send(self, datagram: bytes) -> None:
        try:
            if self.sock is None:
                self.sock = open_socket(self.host)
            self.sock.send(datagram)
        except OSError as exc:
            # never raised, never waited for: counted, and said once
            if self.errors == 0:
                self.log.warning("Cannot send companion metrics to statsd %s: %s (said once; "
                                 "later losses are only counted)", self.host, exc)
            self.errors += 1

    def close_in_child(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
