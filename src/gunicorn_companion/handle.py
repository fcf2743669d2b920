"""The master's record of the companion manager, as a pure state machine.

``step(handle, event)`` returns the next ``Handle`` and the actions to carry
out; it forks, signals, reads and sleeps nothing itself. ``ManagerDriver``
carries the actions out through a ``MasterHost``: the master's few OS calls
about its manager (fork it, signal it, claim it by pid, read the lifeline,
sweep its session, the clock). arbiter.py has the real host; the
deterministic simulation (tests/simulation.py) drives the same driver over
a virtual process table.

The lifeline is a pipe whose write end the manager and every companion hold
and whose read end the master keeps: the manager writes its boot line on it,
and after that EOF means every process of that manager's tree has exited. A
replacement is forked only after that EOF (DRAINING -> IDLE), so two
instances of one companion never run at once, whatever order the kernel
reaps things in.

    IDLE --fork--> BOOTING --ready--> UP
                      |  \\--error/EOF/timeout--> FAILING (at boot: halt)
    BOOTING/UP/FAILING --exit--> DRAINING --lifeline EOF--> IDLE (backoff)
    BOOTING/UP/FAILING --stop--> STOPPING --exit--> STOPPED
    FAILING (at boot) --exit--> STOPPED
    IDLE/DRAINING --stop--> STOPPED
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from . import handshake, sdnotify
from .lifecycle import ExitStatus

# Respawn backoff for a manager that keeps crashing: it never loops tightly.
RESPAWN_DELAY_MIN = 0.5
RESPAWN_DELAY_MAX = 30.0
# A manager that lived this long was healthy: its crash restarts the backoff.
HEALTHY_UPTIME = 10.0
# How long the master waits for a freshly forked manager to report its boot.
BOOT_TIMEOUT = 60.0
# How long the master waits for a manager it SIGKILLed, and for its tree.
KILL_WAIT = 5.0


def respawn_delay(crashes_in_a_row: int) -> float:
    """Seconds before a dead manager is replaced: the minimum, doubled for each
    crash in a row after the first, up to the maximum (pure)."""
    return min(RESPAWN_DELAY_MIN * 2 ** max(crashes_in_a_row - 1, 0), RESPAWN_DELAY_MAX)


class Phase(enum.Enum):
    IDLE = "idle"  # no manager, nothing of an old tree: fork one when wanted and due
    BOOTING = "booting"  # forked; its boot line is not read yet
    UP = "up"  # reported that it booted
    FAILING = "failing"  # reported (or timed out) that it cannot boot; its exit is awaited
    DRAINING = "draining"  # reaped; what is left of its tree still holds the lifeline
    STOPPING = "stopping"  # the master stops: the manager was told to; its exit is awaited
    STOPPED = "stopped"  # the master stops, and the manager is reaped (or there was none)


# A manager process exists: it can be signalled, and its exit is awaited.
LIVE_PHASES = frozenset({Phase.BOOTING, Phase.UP, Phase.FAILING, Phase.STOPPING})


@dataclass(frozen=True)
class Handle:
    phase: Phase = Phase.IDLE
    pid: int = 0  # the live manager (LIVE_PHASES), else 0
    last_pid: int = 0  # the last one forked: it leads the session that holds its tree
    at_boot: bool = False  # the master's first manager: a failure to boot halts Gunicorn
    spawned_at: float = 0.0
    boot_deadline: float = 0.0
    crashes_in_a_row: int = 0  # deaths each within HEALTHY_UPTIME of their start
    next_spawn_at: float = 0.0
    warned_waiting: bool = False  # logged that an old tree takes long to go


# -- events ----------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    """The master's main loop starts: fork the first manager and wait for it."""


@dataclass(frozen=True)
class Tick:
    """A turn of the master's loop; ``wanted``: the config has companions."""
    now: float
    wanted: bool = True


@dataclass(frozen=True)
class Forked:
    pid: int
    now: float


@dataclass(frozen=True)
class Reported:
    """A whole boot line was read, or the lifeline ended before one."""
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class Exited:
    """The manager was reaped; ``status`` None: Gunicorn's own reap loop
    took it first, so how it ended is unknown."""
    status: int | None
    now: float


@dataclass(frozen=True)
class TreeGone:
    """EOF on the lifeline: no process of the last manager's tree is left."""


@dataclass(frozen=True)
class StopManager:
    graceful: bool


@dataclass(frozen=True)
class StopOverdue:
    timeout: float


@dataclass(frozen=True)
class Forward:
    """A signal the master passes on (HUP: reread, USR1: reopen logs)."""
    signal: int


# -- actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Fork:
    at_boot: bool  # else a replacement: it runs what the config files say now


@dataclass(frozen=True)
class Signal:
    pid: int
    signal: int


@dataclass(frozen=True)
class SweepSession:
    """SIGKILL what is left of a dead manager's session (its companions'
    own children: PDEATHSIG took the companions)."""
    leader: int


@dataclass(frozen=True)
class Booted:
    pid: int


@dataclass(frozen=True)
class Log:
    level: str  # "info", "warning" or "error"
    message: str


@dataclass(frozen=True)
class Halt:
    """The first manager cannot boot: Gunicorn stops instead of retrying."""
    message: str


Event = Boot | Tick | Forked | Reported | Exited | TreeGone | StopManager | StopOverdue | Forward
Action = Fork | Signal | SweepSession | Booted | Log | Halt


def _how(status: int | None) -> tuple[str, bool]:
    """'with exit code 3' / 'by SIGKILL', and whether it exited on request."""
    if status is None:
        return "with an unknown status", False
    # ExitStatus names every signal, a real-time one without a name too
    # (signal.Signals(40) raises, and an exception here halts the master)
    exit_status = ExitStatus.from_wait_status(status)
    how = f"{'by' if exit_status.signal is not None else 'with'} {exit_status.describe()}"
    # The manager exits 0 only after a shutdown it was asked for: TERM, INT
    # or QUIT sent to it by someone other than the master.
    return how, exit_status.code == 0


def _failed(handle: Handle, message: str, actions: list) -> tuple[Handle, list]:
    actions.append(Log("error", f"Companion manager failed to boot: {message}"))
    if handle.at_boot:
        # a failure to boot is not a crash: stop instead of retrying forever
        actions += [Signal(handle.pid, signal.SIGKILL), Halt(message)]
    return replace(handle, phase=Phase.FAILING), actions


def _exited(handle: Handle, event: Exited) -> tuple[Handle, list]:
    actions: list = [SweepSession(handle.last_pid)]
    if handle.phase is Phase.STOPPING or (handle.phase is Phase.FAILING and handle.at_boot):
        # no replacement: the master stops (at boot: halts)
        return replace(handle, phase=Phase.STOPPED, pid=0), actions
    how, asked_to_stop = _how(event.status)
    # A stop on request is no crash, and a crash after a healthy run starts
    # the count over: only a manager that cannot stay up waits longer and
    # longer (up to RESPAWN_DELAY_MAX) instead of restarting every companion
    # in a tight loop.
    if asked_to_stop:
        crashes = 0
    elif event.now - handle.spawned_at >= HEALTHY_UPTIME:
        crashes = 1
    else:
        crashes = handle.crashes_in_a_row + 1
    delay = respawn_delay(crashes)
    actions.append(Log("error", f"Companion manager exited {how}; starting a new one in "
                                f"{delay:.1f}s, once its companions are gone"))
    return replace(handle, phase=Phase.DRAINING, pid=0, crashes_in_a_row=crashes,
                   next_spawn_at=event.now + delay), actions


def step(handle: Handle, event: Event) -> tuple[Handle, list[Action]]:
    """The next handle and what to do, for one event (pure)."""
    phase = handle.phase
    live = phase in LIVE_PHASES
    if isinstance(event, Boot):
        if phase is Phase.IDLE:
            return replace(handle, at_boot=True), [Fork(at_boot=True)]
    elif isinstance(event, Tick):
        if phase is Phase.IDLE and event.wanted and event.now >= handle.next_spawn_at:
            return replace(handle, at_boot=False), [Fork(at_boot=False)]
        if phase is Phase.BOOTING and event.now >= handle.boot_deadline:
            return _failed(handle, f"no answer within {BOOT_TIMEOUT:g}s",
                           [Signal(handle.pid, signal.SIGKILL)])
        if (phase is Phase.DRAINING and not handle.warned_waiting
                and event.now - handle.spawned_at > HEALTHY_UPTIME):
            return replace(handle, warned_waiting=True), [
                Log("warning", "Waiting for the old companion manager's companions to exit")]
    elif isinstance(event, Forked):
        if phase is Phase.IDLE:
            return replace(handle, phase=Phase.BOOTING, pid=event.pid, last_pid=event.pid,
                           spawned_at=event.now, boot_deadline=event.now + BOOT_TIMEOUT,
                           warned_waiting=False), []
    elif isinstance(event, Reported):
        if phase is Phase.BOOTING:
            if event.ok:
                return replace(handle, phase=Phase.UP), [Booted(handle.pid)]
            return _failed(handle, event.message, [])
    elif isinstance(event, Exited):
        if live:
            return _exited(handle, event)
    elif isinstance(event, TreeGone):
        if phase is Phase.DRAINING:
            return replace(handle, phase=Phase.IDLE, warned_waiting=False), []
    elif isinstance(event, StopManager):
        if phase is Phase.STOPPING:
            # a quick shutdown overtakes a graceful one
            return handle, [] if event.graceful else [Signal(handle.pid, signal.SIGQUIT)]
        if live:
            sig = signal.SIGTERM if event.graceful else signal.SIGQUIT
            return replace(handle, phase=Phase.STOPPING), [Signal(handle.pid, sig)]
        if phase is not Phase.STOPPED:
            return replace(handle, phase=Phase.STOPPED), []
    elif isinstance(event, StopOverdue):
        if phase is Phase.STOPPING:
            # PDEATHSIG takes its companions with it
            return handle, [Log("error", f"Companion manager did not stop in "
                                         f"{event.timeout:.1f}s; killing it"),
                            Signal(handle.pid, signal.SIGKILL)]
    elif isinstance(event, Forward):
        if live:
            return handle, [Signal(handle.pid, event.signal)]
    else:
        raise TypeError(f"not a handle event: {event!r}")
    return handle, []


# -- the driver: the handle over the master's OS calls ---------------------------------


class MasterHost(Protocol):
    """The master's OS calls about its manager; see the module docstring."""

    log: object  # the master's logger
    def now(self) -> float: ...
    def fork_manager(self, at_boot: bool) -> int: ...  # opens a new lifeline
    def signal(self, pid: int, sig: int) -> None: ...  # a process already gone is no error
    def claim(self, pid: int) -> tuple[bool, int | None]: ...  # (reaped, wait status or None)
    def read_lifeline(self, wait: float) -> bytes | None: ...  # None: nothing yet; b"": EOF
    def sweep_session(self, leader: int) -> None: ...


class ManagerBootFailed(Exception):
    """The first manager could not boot (the message says why)."""


class ManagerDriver:
    """Carries out the handle's actions. ``claim`` may run inside Gunicorn
    23's SIGCHLD handler, so it only records; everything else runs in the
    master's main loop."""

    def __init__(self, host: MasterHost):
        self.host = host
        self.handle = Handle()
        self.claimed: tuple[int | None] | None = None  # (status,) reaped, not yet handled
        self.boot_report = b""
        self.news = b""  # what a running manager wrote after its boot line (sdnotify.py)

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def phase(self) -> Phase:
        return self.handle.phase

    def apply(self, event: Event) -> None:
        self.handle, actions = step(self.handle, event)
        self.execute(actions)

    def execute(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Fork):
                self.boot_report = self.news = b""
                pid = self.host.fork_manager(action.at_boot)
                self.apply(Forked(pid, self.host.now()))
            elif isinstance(action, Signal):
                self.host.signal(action.pid, action.signal)
            elif isinstance(action, SweepSession):
                self.host.sweep_session(action.leader)
            elif isinstance(action, Booted):
                self.on_booted(action.pid)
            elif isinstance(action, Log):
                getattr(self.host.log, action.level)("%s", action.message)
            elif isinstance(action, Halt):
                self.wait_exit(KILL_WAIT)
                raise ManagerBootFailed(action.message)

    def on_booted(self, pid: int) -> None:
        """A manager reported that it booted (the first one or a replacement)."""
        self.host.log.info("Companion manager booted (pid: %s)", pid)

    # -- reaping (record only) --------------------------------------------------

    def claim(self) -> None:
        """Reap the manager by its own pid before Gunicorn's waitpid(-1) loop
        would take it for an unknown worker."""
        if self.handle.pid and self.claimed is None:
            reaped, status = self.host.claim(self.handle.pid)
            if reaped:
                self.claimed = (status,)

    def _handle_exit(self) -> None:
        if self.claimed is not None:
            (status,), self.claimed = self.claimed, None
            self.apply(Exited(status, self.host.now()))

    # -- the master loop's part --------------------------------------------------

    def start_at_boot(self) -> None:
        """Fork the first manager and wait for its boot line; raise
        ManagerBootFailed if it cannot boot (nothing of it is left then)."""
        self.apply(Boot())
        while self.handle.phase is Phase.BOOTING:
            self._read_boot_line(wait=self.handle.boot_deadline - self.host.now())
            self.apply(Tick(self.host.now()))  # the boot deadline

    def maintain(self, wanted: bool) -> None:
        if self.handle.phase is Phase.BOOTING:
            # a replacement reports while the master's loop goes on (HTTP
            # workers must not wait for a slow import)
            self._read_boot_line(wait=0.0)
        self._handle_exit()
        if self.handle.phase is Phase.DRAINING:
            self._drain_lifeline(wait=0.0)
        self.apply(Tick(self.host.now(), wanted))

    def _read_boot_line(self, wait: float) -> None:
        chunk = self.host.read_lifeline(max(0.0, wait))
        if chunk is None:
            return
        if not chunk:
            self.apply(Reported(False, "it exited before reporting (see the log above)"))
            return
        self.boot_report += chunk
        line, newline, rest = self.boot_report.partition(b"\n")
        if newline:
            # what follows at once is the manager's first news (sdnotify.py)
            self.news = rest
            self.apply(Reported(*handshake.parse(line + newline)))

    def read_news(self) -> list[str]:
        """Whole lines a running manager wrote after its boot line: its news
        for systemd (sdnotify.py). Only while UP: then the lifeline carries
        nothing else, and its EOF is left for the drain after the exit."""
        if self.handle.phase is not Phase.UP:
            return []
        while chunk := self.host.read_lifeline(0.0):
            self.news += chunk
        lines, self.news = sdnotify.parse_news(self.news)
        return lines

    def _drain_lifeline(self, wait: float) -> bool:
        """Read (and drop) what is left on the lifeline until EOF or ``wait``."""
        deadline = self.host.now() + wait
        while (chunk := self.host.read_lifeline(max(0.0, deadline - self.host.now()))) != b"":
            if chunk is None and self.host.now() >= deadline:
                return False
        self.apply(TreeGone())
        return True

    def forward(self, sig: int) -> None:
        self.apply(Forward(sig))

    def stop(self, graceful: bool) -> None:
        self.apply(StopManager(graceful))

    def stop_overdue(self, timeout: float) -> None:
        self.apply(StopOverdue(timeout))

    def shutdown(self, graceful: bool, timeout: float, *, then=lambda: None,
                 quick_requested=lambda: False) -> None:
        """The master stops: tell the manager, run ``then`` (Gunicorn's own
        stop of its workers), wait up to ``timeout`` for the manager (a quick
        stop requested meanwhile hurries it), SIGKILL it if overdue, and
        sweep what is left of its tree."""
        deadline = self.host.now() + timeout
        self.stop(graceful)
        then()
        quick = not graceful
        while not self.wait_exit(min(0.1, max(0.0, deadline - self.host.now()))):
            if self.host.now() >= deadline:
                break
            if not quick and quick_requested():
                quick = True  # Ctrl-C (or QUIT) while companions drain: hurry them
                self.host.log.info("Quick shutdown requested")
                self.stop(graceful=False)
        if self.handle.pid:
            self.stop_overdue(timeout)
            self.wait_exit(KILL_WAIT)
        self.finish_stop()

    def wait_exit(self, timeout: float) -> bool:
        """Wait (in the master's main loop, not a handler) until the manager is reaped."""
        deadline = self.host.now() + timeout
        while True:
            self.claim()
            self._handle_exit()
            if not self.handle.pid:
                return True
            remaining = deadline - self.host.now()
            if remaining <= 0:
                return False
            # woken early by the lifeline's EOF when the whole tree is gone;
            # reading drops the boot line of a manager stopped before it
            # reported, which would otherwise keep the lifeline readable
            # (and this loop busy)
            self.host.read_lifeline(min(remaining, 0.05))

    def finish_stop(self) -> None:
        """The master's last word: SIGKILL what is left of the tree and wait
        (a little) for the lifeline to say it is gone."""
        if self.handle.last_pid:
            self.host.sweep_session(self.handle.last_pid)
        self._drain_lifeline(wait=KILL_WAIT)
