"""The companion state machine: ``step(record, event, now) -> (record, actions)``.

Pure: it never forks, signals or reads the clock. The manager's loop feeds it
events (requests, exits, timer expiries) with the current monotonic time and
carries out the actions it returns. Every transition is named in a comment
(``# RUNNING -> BACKOFF``) so the diagram in docs/ can be checked against it.

Time-driven moves happen in ``_tick``, exit-driven ones in ``_exited``: each
record has at most one pending deadline, and the loop derives its timers from
``record.deadline`` instead of keeping a second copy of that state.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

from .spec import CompanionSpec
from .states import PROCESS_STATES, STARTABLE_STATES, State


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15; ``signal 40`` for a number without a name (a real-time one)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code or a signal, never both."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> "ExitStatus":
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.WEXITSTATUS(status))

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        return signal_name(self.signal)

    def describe(self) -> str:
        if self.signal is not None:
            name = self.signal_name
            return f"signal {name}" if name.startswith("SIG") else name
        return f"exit code {self.code}"

    def as_json(self) -> dict:
        if self.signal is not None:
            return {"signal": self.signal_name}
        return {"code": self.code}


# -- events ------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Run it (boot, `start`, a reread that added it)."""


@dataclass(frozen=True)
class Stop:
    """Stop it and keep it stopped. ``quick`` skips the stop signal."""

    quick: bool = False


@dataclass(frozen=True)
class Restart:
    """Stop the current process (waiting ``reload_timeout``) and start a new one."""


@dataclass(frozen=True)
class Reconfigure:
    """A reread changed this companion's spec: restart it with the new one if
    it should run; a companion stopped by hand stays stopped."""

    spec: CompanionSpec


@dataclass(frozen=True)
class Spawned:
    pid: int
    # a random number in [0, 1) from the loop: spreads max_lifetime recycling
    jitter: float = 0.0


@dataclass(frozen=True)
class SpawnFailed:
    reason: str


@dataclass(frozen=True)
class Exited:
    status: ExitStatus
    # a random number in [0, 1) from the loop: spreads crash-loop backoff
    jitter: float = 0.5


@dataclass(frozen=True)
class Notified:
    """The companion itself said something over its notify channel."""

    what: str  # "ready", "heartbeat", "lock-wait" or "lock-held"


@dataclass(frozen=True)
class Recycle:
    """Restart it gracefully for a reason found outside (e.g. max_memory)."""

    reason: str


@dataclass(frozen=True)
class Tick:
    """The record's deadline has passed."""


@dataclass(frozen=True)
class LeaseGranted:
    """A fleet singleton may run here: its lease is ours and any lock-delay over."""


@dataclass(frozen=True)
class LeaseLost:
    """A fleet singleton may no longer run here. Its process must be gone
    before the lease can end by our clock: stopped (``stop_timeout``, then
    SIGKILL) or, with ``quick``, SIGKILLed at once."""

    quick: bool
    reason: str


@dataclass(frozen=True)
class LeaseNote:
    """What a fleet singleton waiting for its lease waits on, for status."""

    text: str


Event = (Start | Stop | Restart | Reconfigure | Spawned | SpawnFailed | Exited | Tick | Notified
         | Recycle | LeaseGranted | LeaseLost | LeaseNote)


# -- actions -----------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    name: str


@dataclass(frozen=True)
class Kill:
    """Send ``signal`` to the companion's main process, or with ``group`` to
    every process of its group (it leads one: its pgid is its pid)."""

    name: str
    pid: int
    signal: int
    group: bool = False


@dataclass(frozen=True)
class Log:
    level: int
    message: str


Action = Spawn | Kill | Log


@dataclass(frozen=True)
class Stopping:
    """How a stop is going, for status: a hung stop explains itself."""

    since: float  # monotonic time the stop signal was sent
    signal: int  # the last signal sent (the stop signal, or SIGKILL once escalated)
    timeout: float  # seconds it had to exit before SIGKILL


@dataclass(frozen=True)
class Record:
    """One companion's supervision state."""

    spec: CompanionSpec
    state: State = State.STOPPED
    pid: int | None = None
    wanted: bool = False  # should be running: cleared by stop, set by start
    started_at: float | None = None  # monotonic time of the current process's fork
    deadline: float | None = None  # when `_tick` must look at this record next
    restarts: int = 0  # automatic restarts after the companion exited on its own
    last_exit: ExitStatus | None = None
    killed: bool = False  # SIGKILL already sent to this process
    failures: int = 0  # consecutive failed starts (exits before RUNNING)
    lifetime_at: float | None = None  # RUNNING: when max_lifetime recycles it
    watchdog_at: float | None = None  # RUNNING: when a missing heartbeat kills it
    waiting: str | None = None  # STARTING: what it waits for, shown in status
    last_recycle: str | None = None  # why it was last restarted on purpose
    # A reread changed the spec while the old process still runs: it stops as
    # the old spec says, and the new spec takes over when it has exited.
    next_spec: CompanionSpec | None = None
    stopping: Stopping | None = None  # STOPPING: since when, with which signal
    # BACKOFF/FATAL: since when it has been down on its own (its first exit of
    # this crash loop), for status and health checks
    down_since: float | None = None
    # a fleet singleton may be spawned (its lease is ours): see LeaseGranted
    leased: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


def _label(record: Record) -> str:
    if record.pid is None:
        return f"companion {record.name!r}"
    return f"companion {record.name!r} (pid {record.pid})"


def _spawn(record: Record, now: float) -> tuple[Record, list[Action]]:
    if record.spec.fleet and not record.leased:
        # * -> STARTING, with no process until the fleet lease is ours
        return replace(record, state=State.STARTING, pid=None, started_at=None, deadline=None,
                       killed=False, lifetime_at=None, watchdog_at=None, stopping=None,
                       waiting=record.waiting or "fleet lease"), []
    # * -> STARTING (the pid arrives with Spawned)
    return (
        replace(record, state=State.STARTING, pid=None, started_at=now, deadline=None,
                killed=False, lifetime_at=None, watchdog_at=None, waiting=None, stopping=None),
        [Spawn(record.name)],
    )


def _running(record: Record, now: float, how: str) -> tuple[Record, list[Action]]:
    # STARTING -> RUNNING: arms the RUNNING timers and ends a crash loop
    spec = record.spec
    watchdog_at = now + spec.watchdog_timeout if spec.watchdog_timeout else None
    record = replace(record, state=State.RUNNING, failures=0, waiting=None,
                     watchdog_at=watchdog_at, down_since=None)
    return _rearm(record), [Log(logging.INFO, f"{_label(record)} {how}")]


def _rearm(record: Record) -> Record:
    """A RUNNING record's deadline is its nearest timer."""
    times = [t for t in (record.lifetime_at, record.watchdog_at) if t is not None]
    return replace(record, deadline=min(times) if times else None)


def _ask_to_stop(
    record: Record, now: float, timeout: float, quick: bool
) -> tuple[Record, list[Action]]:
    # STARTING/RUNNING -> STOPPING
    assert record.state in PROCESS_STATES and record.pid is not None, record
    record = replace(record, lifetime_at=None, watchdog_at=None, waiting=None)
    if quick:
        return _kill_group(replace(record, state=State.STOPPING,
                                   stopping=Stopping(now, signal.SIGKILL, 0.0)))
    # The stop signal goes to the main process only, unless asked otherwise: a
    # pool parent (Celery prefork, RQ's WorkerPool, django-q's cluster) stops
    # its children itself, and a signal that reaches them directly kills the
    # work in flight or leaves the parent waiting on a dead child.
    spec = record.spec
    return (
        replace(record, state=State.STOPPING, deadline=now + timeout,
                stopping=Stopping(now, spec.stop_signal, timeout)),
        [Kill(record.name, record.pid, spec.stop_signal, group=spec.stop_as_group)],
    )


def _kill_group(record: Record) -> tuple[Record, list[Action]]:
    """SIGKILL for the whole group: nothing of the companion may stay."""
    stopping = record.stopping and replace(record.stopping, signal=signal.SIGKILL)
    return (
        replace(record, deadline=None, killed=True, stopping=stopping),
        [Kill(record.name, record.pid, signal.SIGKILL, group=True)],
    )


def _start(record: Record, event: Start, now: float):
    record = replace(record, wanted=True)
    if record.state in STARTABLE_STATES:
        # STOPPED/BACKOFF/FATAL -> STARTING, with a fresh count of failures
        return _spawn(replace(record, failures=0), now)
    # STARTING/RUNNING: already up. STOPPING: `_exited` starts it again since
    # it is wanted now.
    return record, []


def _waiting_for_lease(record: Record) -> bool:
    return record.state == State.STARTING and record.pid is None


def _stop(record: Record, event: Stop, now: float):
    record = replace(record, wanted=False)
    if _waiting_for_lease(record):
        # STARTING (no process yet) -> STOPPED
        return replace(record, state=State.STOPPED, waiting=None), []
    if record.state in (State.STARTING, State.RUNNING):
        return _ask_to_stop(record, now, record.spec.stop_timeout, event.quick)
    if record.state == State.STOPPING:
        if event.quick and not record.killed:
            # STOPPING -> STOPPING, escalated: a quick shutdown overtakes a graceful one
            return _kill_group(record)
        return record, []
    if record.state == State.BACKOFF:
        # BACKOFF -> STOPPED
        return replace(record, state=State.STOPPED, deadline=None, down_since=None), []
    return record, []  # STOPPED/FATAL: nothing to do


def _restart(record: Record, event: Restart, now: float):
    record = replace(record, wanted=True, failures=0)
    if _waiting_for_lease(record):
        return record, []  # it starts when the lease is ours
    if record.state in (State.STARTING, State.RUNNING):
        return _ask_to_stop(record, now, record.spec.reload_timeout, quick=False)
    if record.state == State.STOPPING:
        return record, []  # `_exited` starts it again since it is wanted
    # STOPPED/BACKOFF/FATAL -> STARTING
    return _spawn(record, now)


def _recycle(record: Record, event: Recycle, now: float):
    if record.state not in (State.STARTING, State.RUNNING) or record.pid is None:
        return record, []
    # RUNNING -> STOPPING, to start again: a graceful restart for a reason
    stopping, actions = _ask_to_stop(record, now, record.spec.stop_timeout, quick=False)
    return replace(stopping, wanted=True, last_recycle=event.reason), [
        Log(logging.INFO, f"{_label(record)} is restarted: {event.reason}")
    ] + actions


def _reconfigure(record: Record, event: Reconfigure, now: float):
    if _waiting_for_lease(record):
        # STARTING (no process yet) -> STARTING with the new spec, which may
        # not need a lease any more
        return _spawn(replace(record, spec=event.spec, next_spec=None, failures=0), now)
    if record.state in (State.STARTING, State.RUNNING):
        # STARTING/RUNNING -> STOPPING: the old process stops as the old spec
        # says (its stop signal, its reload_timeout); `_exited` starts the new
        stopping, actions = _ask_to_stop(record, now, record.spec.reload_timeout, quick=False)
        return replace(stopping, next_spec=event.spec, wanted=True, failures=0), actions
    if record.state == State.STOPPING:
        return replace(record, next_spec=event.spec), []  # `_exited` swaps it in
    record = replace(record, spec=event.spec, next_spec=None)
    if record.wanted and record.state in STARTABLE_STATES:
        # BACKOFF/FATAL -> STARTING: a new spec deserves a fresh start
        return _spawn(replace(record, failures=0), now)
    return record, []  # STOPPED by hand: stays so


def _settling(record: Record, now: float) -> tuple[Record, list[Action]]:
    """STARTING with a live process: wait for ready() or startsecs."""
    spec = record.spec
    if spec.wait_ready:
        return replace(record, deadline=None, waiting="ready()"), [
            Log(logging.INFO, f"{_label(record)} starting; waiting for ready()")
        ]
    if spec.startsecs <= 0:
        # STARTING -> RUNNING at once: no settling time asked for
        return _running(record, now, "started")
    return replace(record, deadline=now + spec.startsecs, waiting=None), [
        Log(logging.INFO, f"{_label(record)} starting")
    ]


def _spawned(record: Record, event: Spawned, now: float):
    assert record.state == State.STARTING and record.pid is None, record
    spec = record.spec
    lifetime_at = None
    if spec.max_lifetime:
        lifetime_at = now + spec.max_lifetime + event.jitter * spec.max_lifetime_jitter
    record = replace(record, pid=event.pid, started_at=now, lifetime_at=lifetime_at)
    if spec.host_singleton:
        # The companion reports when it holds the singleton lock; until then
        # startsecs does not run (it may wait long for an older instance).
        return replace(record, deadline=None, waiting="singleton lock"), []
    return _settling(record, now)


def _notified(record: Record, event: Notified, now: float):
    if record.pid is None or record.state not in (State.STARTING, State.RUNNING):
        return record, []  # late news from a process that is on its way out
    if event.what == "lock-wait" and record.state == State.STARTING:
        return replace(record, waiting="singleton lock held by another instance"), [
            Log(logging.INFO, f"{_label(record)} waits for its singleton lock "
                              "(another instance holds it)")
        ]
    if event.what == "lock-held" and record.state == State.STARTING:
        if record.waiting and record.waiting.startswith("singleton"):
            return _settling(record, now)
        return record, []
    if event.what == "ready" and record.state == State.STARTING:
        if record.waiting and record.waiting.startswith("singleton"):
            return record, []  # ready() before the lock: cannot happen; ignore
        # STARTING -> RUNNING: it said so itself
        return _running(record, now, "is RUNNING (ready)")
    if event.what == "heartbeat" and record.state == State.RUNNING and record.watchdog_at:
        return _rearm(replace(record, watchdog_at=now + record.spec.watchdog_timeout)), []
    return record, []


def _spawn_failed(record: Record, event: SpawnFailed, now: float):
    # STARTING -> BACKOFF: the fork itself (or opening its output) failed
    delay = record.spec.restart_delay
    return (
        replace(record, state=State.BACKOFF, pid=None, deadline=now + delay,
                down_since=record.down_since or now),
        [Log(logging.ERROR, f"{_label(record)} could not be started: {event.reason}; "
                            f"retrying in {delay:.3g}s")],
    )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def backoff_delay(spec: CompanionSpec, failures: int, jitter: float) -> float:
    """restart_delay, doubled for each consecutive failed start after the first,
    capped at max_restart_delay; from the second on, spread by +-10% so that
    companions failing together do not restart in lockstep."""
    if failures <= 1:
        return spec.restart_delay
    delay = min(spec.restart_delay * 2 ** (failures - 1),
                max(spec.max_restart_delay, spec.restart_delay))
    return delay * (0.9 + 0.2 * jitter)


def _exited(record: Record, event: Exited, now: float):
    label = _label(record)
    was = record.state
    record = replace(record, pid=None, last_exit=event.status, deadline=None, killed=False,
                     spec=record.next_spec or record.spec, next_spec=None, lifetime_at=None,
                     watchdog_at=None, waiting=None, stopping=None)
    how = event.status.describe()
    if was == State.STOPPING:
        if record.wanted:
            # STOPPING -> STARTING: a restart, or a start that came while it stopped
            new, actions = _spawn(record, now)
            return new, [Log(logging.INFO, f"{label} stopped ({how}); starting it again")] + actions
        # STOPPING -> STOPPED
        return replace(record, state=State.STOPPED, down_since=None), [
            Log(logging.INFO, f"{label} stopped ({how})")]
    if was not in (State.STARTING, State.RUNNING):
        raise AssertionError(f"exit of {label} in state {was}")
    # it exited on its own; an exit before RUNNING is a failed start
    failures = record.failures + 1 if was == State.STARTING else 0
    # a failed restart continues the crash loop that made it; a RUNNING
    # companion that exits starts a new one
    down_since = record.down_since if was == State.STARTING and record.down_since else now
    record = replace(record, down_since=down_since)
    retries = record.spec.startretries
    if was == State.STARTING and retries is not None and failures > retries:
        # STARTING -> FATAL: the first start and every retry failed
        return replace(record, state=State.FATAL, failures=failures), [
            Log(logging.ERROR, f"{label} exited with {how} before it was RUNNING, "
                               f"{_times(failures)} in a row; giving up (FATAL). "
                               f"`gunicorn-companion start {record.name}` tries again")
        ]
    # STARTING/RUNNING -> BACKOFF
    delay = backoff_delay(record.spec, failures, event.jitter)
    return replace(record, state=State.BACKOFF, failures=failures, deadline=now + delay), [
        Log(logging.ERROR, f"{label} exited unexpectedly with {how}; restarting in {delay:.3g}s")
    ]


def _tick(record: Record, event: Tick, now: float):
    if record.deadline is None or now < record.deadline:
        return record, []  # a stale timer: the deadline moved on
    if record.state == State.STARTING:
        # STARTING -> RUNNING: it stayed up for `startsecs`
        return _running(record, now, "is RUNNING")
    if record.state == State.BACKOFF:
        # BACKOFF -> STARTING
        return _spawn(replace(record, restarts=record.restarts + 1), now)
    if record.state == State.STOPPING:
        # STOPPING -> STOPPING, escalated: it outlived its timeout
        killed, actions = _kill_group(record)
        return killed, [
            Log(logging.WARNING, f"{_label(record)} did not exit in time after "
                                 f"{record.spec.stop_signal_name}; sending SIGKILL to its "
                                 "process group"),
        ] + actions
    if record.state == State.RUNNING:
        if record.watchdog_at is not None and now >= record.watchdog_at:
            # RUNNING -> STOPPING (killed), to start again: it stopped heartbeating
            stopping, actions = _ask_to_stop(record, now, 0, quick=True)
            return replace(stopping, wanted=True, last_recycle="watchdog",
                           restarts=record.restarts + 1), [
                Log(logging.ERROR, f"{_label(record)} sent no heartbeat for "
                                   f"{record.spec.watchdog_timeout:g}s; killing it")
            ] + actions
        if record.lifetime_at is not None and now >= record.lifetime_at:
            return _recycle(record, Recycle("max_lifetime reached"), now)
        return _rearm(record), []
    return replace(record, deadline=None), []


def _lease_granted(record: Record, event: LeaseGranted, now: float):
    record = replace(record, leased=True)
    if _waiting_for_lease(record) and record.wanted:
        # STARTING (no process) -> STARTING with a process
        return _spawn(replace(record, waiting=None), now)
    return record, []


def _lease_lost(record: Record, event: LeaseLost, now: float):
    record = replace(record, leased=False)
    if record.pid is None:
        if _waiting_for_lease(record):
            return replace(record, waiting=event.reason), []
        return record, []
    if record.state in (State.STARTING, State.RUNNING):
        # STARTING/RUNNING -> STOPPING, to start again once the lease is ours
        stopping, actions = _ask_to_stop(record, now, record.spec.stop_timeout, event.quick)
        return replace(stopping, wanted=record.wanted, waiting=None), [
            Log(logging.WARNING, f"{_label(record)} must stop: {event.reason}"
                                 + ("; killing it now" if event.quick else ""))] + actions
    # STOPPING already (a stop, a restart): it must still be gone in time
    if record.killed:
        return record, []
    if event.quick:
        # STOPPING -> STOPPING, escalated
        return _kill_group(record)
    deadline = now + record.spec.stop_timeout
    if record.deadline is not None and record.deadline <= deadline:
        return record, []
    stopping = record.stopping and replace(record.stopping,
                                           timeout=deadline - record.stopping.since)
    return replace(record, deadline=deadline, stopping=stopping), []


def _lease_note(record: Record, event: LeaseNote, now: float):
    if _waiting_for_lease(record):
        return replace(record, waiting=event.text), []
    return record, []


_HANDLERS: dict[type, Callable] = {
    Start: _start,
    Stop: _stop,
    Restart: _restart,
    Reconfigure: _reconfigure,
    Spawned: _spawned,
    SpawnFailed: _spawn_failed,
    Exited: _exited,
    Tick: _tick,
    Notified: _notified,
    Recycle: _recycle,
    LeaseGranted: _lease_granted,
    LeaseLost: _lease_lost,
    LeaseNote: _lease_note,
}


def step(record: Record, event: Event, now: float) -> tuple[Record, list[Action]]:
    """Apply one event to one record; return the new record and what to do."""
    return _HANDLERS[type(event)](record, event, now)
