"""Table tests for the master's pure record of its manager (handle.py).

No processes, no clock: each row is a handle, an event and what ``step``
must return; the invariants are checked on every row.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field, fields, replace

import pytest

from gunicorn_companion.handle import (
    BOOT_TIMEOUT,
    HEALTHY_UPTIME,
    KILL_WAIT,
    LIVE_PHASES,
    Boot,
    Booted,
    Exited,
    Fork,
    Forked,
    Forward,
    Halt,
    Handle,
    Log,
    ManagerBootFailed,
    ManagerDriver,
    Phase,
    Reported,
    Signal,
    StopManager,
    StopOverdue,
    SweepSession,
    Tick,
    TreeGone,
    respawn_delay,
    step,
)
from gunicorn_companion.handshake import READY

NOW = 100.0
PID = 42
KILL, TERM, QUIT, HUP = signal.SIGKILL, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP
BY_KILL = int(KILL)  # a wait status
EXIT_0, EXIT_3 = 0, 3 << 8

# One handle per situation the master can be in.
IDLE = Handle()
BACKING_OFF = Handle(last_pid=PID, crashes_in_a_row=2, next_spawn_at=NOW + 1.0,
                     spawned_at=NOW - 5.0)
BOOTING = Handle(Phase.BOOTING, pid=PID, last_pid=PID, spawned_at=NOW - 1.0,
                 boot_deadline=NOW - 1.0 + BOOT_TIMEOUT)
BOOTING_FIRST = replace(BOOTING, at_boot=True)
UP = replace(BOOTING, phase=Phase.UP, spawned_at=NOW - 3.0, crashes_in_a_row=2)
UP_LONG = replace(UP, spawned_at=NOW - HEALTHY_UPTIME)
FAILING = replace(BOOTING, phase=Phase.FAILING)
FAILING_FIRST = replace(FAILING, at_boot=True)
DRAINING = Handle(Phase.DRAINING, last_pid=PID, spawned_at=NOW - 3.0, next_spawn_at=NOW + 0.5,
                  crashes_in_a_row=1)
DRAINING_LONG = replace(DRAINING, spawned_at=NOW - HEALTHY_UPTIME - 1)
STOPPING = replace(UP, phase=Phase.STOPPING)
STOPPED = Handle(Phase.STOPPED, last_pid=PID)
ALL = {"IDLE": IDLE, "BACKING_OFF": BACKING_OFF, "BOOTING": BOOTING,
       "BOOTING_FIRST": BOOTING_FIRST, "UP": UP, "FAILING": FAILING,
       "FAILING_FIRST": FAILING_FIRST, "DRAINING": DRAINING, "STOPPING": STOPPING,
       "STOPPED": STOPPED}


def crashed(delay: float, how: str = "by signal SIGKILL") -> Log:
    return Log("error", f"Companion manager exited {how}; starting a new one in {delay:.1f}s, "
                        "once its companions are gone")


# (before, event, changed fields of the handle, actions)
TABLE = [
    # -- forking: only from IDLE, only when wanted and due --------------------------
    (IDLE, Boot(), {"at_boot": True}, [Fork(at_boot=True)]),
    (IDLE, Tick(NOW), {}, [Fork(at_boot=False)]),
    (IDLE, Tick(NOW, wanted=False), {}, []),
    (BACKING_OFF, Tick(NOW), {}, []),  # its backoff has not passed
    (BACKING_OFF, Tick(NOW + 1.0), {}, [Fork(at_boot=False)]),
    (replace(IDLE, at_boot=True), Tick(NOW), {"at_boot": False}, [Fork(at_boot=False)]),
    (DRAINING, Tick(NOW + 1), {}, []),  # never before the old tree is gone
    (STOPPED, Tick(NOW + 60), {}, []),
    (STOPPING, Tick(NOW + 60), {}, []),
    (UP, Boot(), {}, []),
    (IDLE, Forked(PID, NOW),
     {"phase": Phase.BOOTING, "pid": PID, "last_pid": PID, "spawned_at": NOW,
      "boot_deadline": NOW + BOOT_TIMEOUT}, []),
    (replace(IDLE, warned_waiting=True), Forked(PID, NOW),
     {"phase": Phase.BOOTING, "pid": PID, "last_pid": PID, "spawned_at": NOW,
      "boot_deadline": NOW + BOOT_TIMEOUT, "warned_waiting": False}, []),
    (UP, Forked(7, NOW), {}, []),
    # -- the boot line ---------------------------------------------------------
    (BOOTING, Reported(True), {"phase": Phase.UP}, [Booted(PID)]),
    (BOOTING, Reported(False, "bad target"), {"phase": Phase.FAILING},
     [Log("error", "Companion manager failed to boot: bad target")]),
    (BOOTING_FIRST, Reported(False, "bad target"), {"phase": Phase.FAILING},
     [Log("error", "Companion manager failed to boot: bad target"), Signal(PID, KILL),
      Halt("bad target")]),
    (BOOTING, Tick(BOOTING.boot_deadline - 0.001), {}, []),
    (BOOTING, Tick(BOOTING.boot_deadline), {"phase": Phase.FAILING},
     [Signal(PID, KILL), Log("error", f"Companion manager failed to boot: no answer within "
                                      f"{BOOT_TIMEOUT:g}s")]),
    (UP, Reported(True), {}, []),
    (FAILING, Reported(True), {}, []),
    # -- exits: backoff, then draining ------------------------------------------------
    (UP, Exited(BY_KILL, NOW),
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 3, "next_spawn_at": NOW + 2.0},
     [SweepSession(PID), crashed(2.0)]),
    (UP_LONG, Exited(BY_KILL, NOW),  # a healthy run: the count starts over
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 1, "next_spawn_at": NOW + 0.5},
     [SweepSession(PID), crashed(0.5)]),
    (UP, Exited(EXIT_0, NOW),  # asked to stop by someone else: no crash
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 0, "next_spawn_at": NOW + 0.5},
     [SweepSession(PID), crashed(0.5, "with exit code 0")]),
    (UP, Exited(EXIT_3, NOW),
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 3, "next_spawn_at": NOW + 2.0},
     [SweepSession(PID), crashed(2.0, "with exit code 3")]),
    (UP, Exited(40, NOW),  # an unnamed real-time signal must not raise
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 3, "next_spawn_at": NOW + 2.0},
     [SweepSession(PID), crashed(2.0, "by signal 40")]),
    (UP, Exited(None, NOW),  # Gunicorn's reap loop took it: a crash of unknown cause
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 3, "next_spawn_at": NOW + 2.0},
     [SweepSession(PID), crashed(2.0, "with an unknown status")]),
    (BOOTING, Exited(EXIT_3, NOW),
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 1, "next_spawn_at": NOW + 0.5},
     [SweepSession(PID), crashed(0.5, "with exit code 3")]),
    (FAILING, Exited(EXIT_3, NOW),
     {"phase": Phase.DRAINING, "pid": 0, "crashes_in_a_row": 1, "next_spawn_at": NOW + 0.5},
     [SweepSession(PID), crashed(0.5, "with exit code 3")]),
    (FAILING_FIRST, Exited(BY_KILL, NOW), {"phase": Phase.STOPPED, "pid": 0},
     [SweepSession(PID)]),  # it halts Gunicorn: no replacement
    (STOPPING, Exited(EXIT_0, NOW), {"phase": Phase.STOPPED, "pid": 0}, [SweepSession(PID)]),
    (DRAINING, Exited(EXIT_0, NOW), {}, []),
    (IDLE, Exited(EXIT_0, NOW), {}, []),
    (DRAINING, TreeGone(), {"phase": Phase.IDLE}, []),
    (replace(DRAINING, warned_waiting=True), TreeGone(),
     {"phase": Phase.IDLE, "warned_waiting": False}, []),
    (UP, TreeGone(), {}, []),
    (STOPPED, TreeGone(), {}, []),
    (DRAINING, Tick(NOW + 1), {}, []),
    (replace(DRAINING, spawned_at=NOW - HEALTHY_UPTIME), Tick(NOW), {}, []),  # not yet
    (DRAINING_LONG, Tick(NOW), {"warned_waiting": True},
     [Log("warning", "Waiting for the old companion manager's companions to exit")]),
    (replace(DRAINING_LONG, warned_waiting=True), Tick(NOW), {}, []),
    # -- the master stops -------------------------------------------------------------
    (UP, StopManager(graceful=True), {"phase": Phase.STOPPING}, [Signal(PID, TERM)]),
    (UP, StopManager(graceful=False), {"phase": Phase.STOPPING}, [Signal(PID, QUIT)]),
    (BOOTING, StopManager(graceful=True), {"phase": Phase.STOPPING}, [Signal(PID, TERM)]),
    (FAILING, StopManager(graceful=True), {"phase": Phase.STOPPING}, [Signal(PID, TERM)]),
    (STOPPING, StopManager(graceful=True), {}, []),
    (STOPPING, StopManager(graceful=False), {}, [Signal(PID, QUIT)]),  # overtakes
    (DRAINING, StopManager(graceful=True), {"phase": Phase.STOPPED}, []),
    (IDLE, StopManager(graceful=False), {"phase": Phase.STOPPED}, []),
    (STOPPED, StopManager(graceful=False), {}, []),
    (STOPPING, StopOverdue(12.5), {},
     [Log("error", "Companion manager did not stop in 12.5s; killing it"), Signal(PID, KILL)]),
    (UP, StopOverdue(12.5), {}, []),
    (STOPPED, StopOverdue(12.5), {}, []),
    # -- signals passed on ------------------------------------------------------------
    (UP, Forward(HUP), {}, [Signal(PID, HUP)]),
    (BOOTING, Forward(HUP), {}, [Signal(PID, HUP)]),
    (STOPPING, Forward(signal.SIGUSR1), {}, [Signal(PID, signal.SIGUSR1)]),
    (DRAINING, Forward(HUP), {}, []),
    (IDLE, Forward(HUP), {}, []),
    (STOPPED, Forward(HUP), {}, []),
]


def changed(before: Handle, after: Handle) -> dict:
    return {f.name: getattr(after, f.name) for f in fields(Handle)
            if getattr(after, f.name) != getattr(before, f.name)}


def row_id(row) -> str:
    before, event = row[0], row[1]
    name = next((k for k, v in ALL.items() if v == before), before.phase.name)
    return f"{name}-{type(event).__name__}"


@pytest.mark.parametrize(("before", "event", "fields_", "actions"), TABLE,
                         ids=[row_id(r) for r in TABLE])
def test_transition(before, event, fields_, actions):
    after, got = step(before, event)
    assert changed(before, after) == fields_
    assert got == actions


@pytest.mark.parametrize(("before", "event", "fields_", "actions"), TABLE,
                         ids=[row_id(r) for r in TABLE])
def test_invariants_after_every_transition(before, event, fields_, actions):
    after, got = step(before, event)
    # a manager process exists exactly in the live phases
    assert (after.pid != 0) == (after.phase in LIVE_PHASES)
    # signals go to the manager the master knew of, never to pid 0 (its own group)
    assert all(a.pid == before.pid != 0 for a in got if isinstance(a, Signal))
    # a new manager is forked only once nothing of the last one's tree is left,
    # and never while the master stops
    if any(isinstance(a, Fork) for a in got):
        assert before.phase is Phase.IDLE and after.phase is Phase.IDLE
    # every death is followed by the sweep of its session
    if before.pid and not after.pid:
        assert SweepSession(before.last_pid) in got
    # a stopping master stays stopping
    if before.phase in (Phase.STOPPING, Phase.STOPPED):
        assert after.phase in (Phase.STOPPING, Phase.STOPPED)


def test_the_table_covers_every_phase_and_event():
    assert {row[0].phase for row in TABLE} == set(Phase)
    assert {type(row[1]) for row in TABLE} == {Boot, Tick, Forked, Reported, Exited, TreeGone,
                                               StopManager, StopOverdue, Forward}


def test_unknown_event_type():
    with pytest.raises(TypeError, match="not a handle event"):
        step(UP, object())


def test_a_manager_that_keeps_crashing_waits_ever_longer_and_a_healthy_run_resets_it():
    handle, now, delays = IDLE, NOW, []
    for uptime in (1.0, 1.0, 1.0, HEALTHY_UPTIME, 1.0):
        handle, _ = step(handle, Tick(now))
        handle, _ = step(handle, Forked(PID, now))
        handle, _ = step(handle, Reported(True))
        now += uptime
        handle, _ = step(handle, Exited(BY_KILL, now))
        handle, _ = step(handle, TreeGone())
        delays.append(handle.next_spawn_at - now)
        now = handle.next_spawn_at
    assert delays == [0.5, 1.0, 2.0, 0.5, 1.0]


@pytest.mark.parametrize(("crashes", "delay"), [
    (0, 0.5),  # it was asked to stop
    (1, 0.5),  # the first crash (after a healthy run)
    (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 16.0),
    (7, 30.0), (50, 30.0),  # capped
])
def test_respawn_delay(crashes, delay):
    assert respawn_delay(crashes) == delay


# -- the driver: the real ManagerDriver over a scripted master host ------------------------


@dataclass
class Script:
    """What one forked manager does: what it writes on its lifeline and when
    (seconds after its fork), when it exits on its own, how long a TERM or
    QUIT takes to end it (None: it ignores them), how long its tree holds the
    lifeline after its exit, and after a sweep of its session (SIGKILL lands
    on a process in disk sleep only when that ends)."""
    lines: tuple[tuple[float, bytes], ...] = ((0.1, READY),)
    exits_after: float | None = None
    status: int = EXIT_3
    stop_takes: float | None = 0.2
    tree_lingers: float = 0.0
    sweep_takes: float = 0.0


@dataclass
class ScriptedManager:
    pid: int
    script: Script
    forked_at: float
    exit_at: float | None = None
    status: int = 0
    reaped: bool = False
    swept_at: float | None = None
    unread: list = field(default_factory=list)  # (when written, bytes)

    def tree_gone_at(self) -> float | None:
        if self.exit_at is None:
            return None
        gone = self.exit_at + self.script.tree_lingers
        if self.swept_at is not None:
            gone = min(gone, max(self.exit_at, self.swept_at + self.script.sweep_takes))
        return gone


class ListLog:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def _at(level):
        def log(self, fmt, *args):
            self.lines.append((level, fmt % args))
        return log

    info, warning, error = _at("info"), _at("warning"), _at("error")


class ScriptedMaster:
    """The master's host (handle.MasterHost) over a virtual clock: each fork
    runs the next Script. Reading the lifeline with a wait moves the clock
    on to the next thing the pipe would show, as select would."""

    def __init__(self, *scripts: Script):
        self.clock = 0.0
        self.scripts = list(scripts)
        self.managers: list[ScriptedManager] = []
        self.calls: list[tuple] = []
        self.log = ListLog()

    def now(self) -> float:
        return self.clock

    @property
    def current(self) -> ScriptedManager:
        return self.managers[-1]

    def fork_manager(self, at_boot: bool) -> int:
        self.calls.append(("fork", at_boot, self.clock))
        script = self.scripts.pop(0)
        manager = ScriptedManager(PID + len(self.managers), script, self.clock)
        manager.unread = [(self.clock + after, data) for after, data in script.lines]
        if script.exits_after is not None:
            manager.exit_at, manager.status = self.clock + script.exits_after, script.status
        self.managers.append(manager)
        return manager.pid

    def _exit(self, manager: ScriptedManager, at: float, status: int) -> None:
        if manager.exit_at is None or at < manager.exit_at:
            manager.exit_at, manager.status = at, status

    def signal(self, pid: int, sig: int) -> None:
        self.calls.append(("signal", pid, signal.Signals(sig).name, self.clock))
        manager = next(m for m in self.managers if m.pid == pid)
        if manager.exit_at is not None and manager.exit_at <= self.clock:
            return  # gone already: no error
        if sig == KILL:
            self._exit(manager, self.clock, BY_KILL)
        elif sig in (TERM, QUIT) and manager.script.stop_takes is not None:
            self._exit(manager, self.clock + manager.script.stop_takes, EXIT_0)

    def claim(self, pid: int) -> tuple[bool, int | None]:
        self.calls.append(("claim", pid))
        manager = next(m for m in self.managers if m.pid == pid)
        if manager.reaped or manager.exit_at is None or manager.exit_at > self.clock:
            return False, None
        manager.reaped = True
        return True, manager.status

    def read_lifeline(self, wait: float) -> bytes | None:
        manager, deadline = self.current, self.clock + wait
        while True:
            # a manager writes nothing after its exit
            written = [(t, d) for t, d in manager.unread if t <= self.clock
                       and (manager.exit_at is None or t <= manager.exit_at)]
            if written:
                manager.unread = [u for u in manager.unread if u not in written]
                return b"".join(d for _, d in written)
            gone = manager.tree_gone_at()
            if gone is not None and gone <= self.clock:
                return b""
            upcoming = [t for t, _ in manager.unread] + [t for t in (gone,) if t is not None]
            upcoming = [t for t in upcoming if t > self.clock]
            if not upcoming or min(upcoming) > deadline:
                self.clock = max(self.clock, deadline)
                return None
            self.clock = min(upcoming)

    def sweep_session(self, leader: int) -> None:
        self.calls.append(("sweep", leader, self.clock))
        for manager in self.managers:
            if manager.pid == leader:
                manager.swept_at = self.clock

    def signals(self) -> list[tuple]:
        return [c[1:3] for c in self.calls if c[0] == "signal"]

    def swept(self) -> list[int]:
        return [c[1] for c in self.calls if c[0] == "sweep"]

    def signalled_at(self, name: str) -> float:
        return next(c[3] for c in self.calls if c[0] == "signal" and c[2] == name)


def booted_driver(*scripts: Script, **first) -> tuple[ManagerDriver, ScriptedMaster]:
    master = ScriptedMaster(Script(**first), *scripts)
    driver = ManagerDriver(master)
    driver.start_at_boot()
    return driver, master


def test_the_first_manager_boots_once_its_ready_line_is_read():
    driver, master = booted_driver(lines=((0.2, b"rea"), (0.3, b"dy\n")))  # in two pieces
    assert (driver.phase, driver.pid) == (Phase.UP, PID)
    assert master.calls == [("fork", True, 0.0)]
    assert master.clock == 0.3  # it waited for the whole line, and no longer
    assert master.log.lines == [("info", f"Companion manager booted (pid: {PID})")]


@pytest.mark.parametrize(("script", "why", "at"), [
    (Script(lines=((0.5, b"error cannot import 'app:worker'\n"),)),
     "cannot import 'app:worker'", 0.5),
    (Script(lines=(), exits_after=1.0), "it exited before reporting (see the log above)", 1.0),
    (Script(lines=()), f"no answer within {BOOT_TIMEOUT:g}s", BOOT_TIMEOUT),
])
def test_a_first_manager_that_cannot_boot_halts_with_why_and_leaves_nothing(script, why, at):
    master = ScriptedMaster(script)
    master.clock = 5.0  # the master's clock does not start at zero
    driver = ManagerDriver(master)
    with pytest.raises(ManagerBootFailed) as failed:
        driver.start_at_boot()
    assert str(failed.value) == why
    assert ("error", f"Companion manager failed to boot: {why}") in master.log.lines
    # it is killed (unreaped, it is still there), waited for and its session
    # swept: nothing is left
    assert set(master.signals()) == {(PID, "SIGKILL")}
    assert PID in master.swept()
    assert (driver.phase, driver.pid) == (Phase.STOPPED, 0)
    assert master.clock == 5.0 + at


def test_a_crashed_manager_is_replaced_only_after_its_tree_is_gone_and_its_backoff():
    driver, master = booted_driver(Script(lines=((1.5, READY),)), exits_after=4.0,
                                   status=BY_KILL, tree_lingers=10.0, sweep_takes=0.3)
    master.clock = 4.0
    driver.claim()
    assert driver.phase is Phase.UP  # claim only records (it may run in a signal handler)
    driver.maintain(wanted=True)
    assert (driver.phase, driver.pid) == (Phase.DRAINING, 0)
    assert PID in master.swept()
    assert master.log.lines[-1] == ("error", "Companion manager exited by signal SIGKILL; "
                                             "starting a new one in 0.5s, once its companions "
                                             "are gone")
    assert master.clock == 4.0  # the master's loop never blocks on the lifeline
    master.clock = 4.29
    driver.maintain(wanted=True)
    assert driver.phase is Phase.DRAINING
    master.clock = 4.3
    driver.maintain(wanted=True)  # the sweep took the tree: the lifeline ends
    assert driver.phase is Phase.IDLE
    master.clock = 4.49
    driver.maintain(wanted=True)
    assert driver.phase is Phase.IDLE  # the backoff has not passed
    master.clock = 4.5
    driver.maintain(wanted=True)
    assert master.calls[-1] == ("fork", False, 4.5)  # a replacement reads the config anew
    assert driver.phase is Phase.BOOTING
    master.clock = 5.0
    driver.maintain(wanted=True)  # its boot line is not there yet: no waiting for it
    assert (driver.phase, master.clock) == (Phase.BOOTING, 5.0)
    master.clock = 6.0
    driver.maintain(wanted=True)
    assert (driver.phase, driver.pid) == (Phase.UP, PID + 1)
    assert master.log.lines[-1] == ("info", f"Companion manager booted (pid: {PID + 1})")


def test_no_replacement_while_its_tree_holds_the_lifeline_or_no_companion_is_configured():
    driver, master = booted_driver(Script(), exits_after=1.0, tree_lingers=30.0,
                                   sweep_takes=60.0)
    master.clock = 1.0
    driver.claim()
    driver.maintain(wanted=True)
    master.clock = 20.0
    driver.maintain(wanted=True)
    assert driver.phase is Phase.DRAINING
    assert master.log.lines[-1] == (
        "warning", "Waiting for the old companion manager's companions to exit")
    master.clock = 31.0
    driver.maintain(wanted=False)  # gone; but nothing to run: no fork
    assert driver.phase is Phase.IDLE
    assert [c for c in master.calls if c[0] == "fork"] == [("fork", True, 0.0)]


def test_a_manager_reaped_twice_counts_once():
    driver, master = booted_driver(exits_after=1.0)
    master.clock = 1.0
    driver.claim()
    driver.claim()  # Gunicorn 23's SIGCHLD handler and the main loop, say
    assert [c for c in master.calls if c[0] == "claim"] == [("claim", PID)]
    driver.maintain(wanted=True)
    driver.maintain(wanted=True)
    assert driver.phase is Phase.IDLE
    assert sum(1 for level, _ in master.log.lines if level == "error") == 1
    assert master.swept() == [PID]


def test_news_after_the_boot_line_is_read_whole_lines_only_and_only_while_up():
    driver, master = booted_driver(lines=((0.1, READY + b"READY=1\nSTATUS=sta"),
                                          (1.0, b"rting\nRELOADING=1\n")))
    assert driver.read_news() == ["READY=1"]  # what came with the boot line
    master.clock = 1.0
    assert driver.read_news() == ["STATUS=starting", "RELOADING=1"]
    assert driver.read_news() == []
    booting = ManagerDriver(ScriptedMaster(Script(lines=((0.1, READY),))))
    booting.handle = replace(booting.handle, phase=Phase.BOOTING)
    assert booting.read_news() == []  # the boot line is the driver's to read


def test_signals_are_forwarded_only_to_a_live_manager():
    driver, master = booted_driver(exits_after=1.0)
    driver.forward(HUP)
    assert master.signals() == [(PID, "SIGHUP")]
    master.clock = 1.0
    driver.claim()
    driver.maintain(wanted=True)
    driver.forward(HUP)
    assert master.signals() == [(PID, "SIGHUP")]


def test_a_graceful_shutdown_waits_for_the_manager_then_sweeps_its_session():
    driver, master = booted_driver(stop_takes=0.7)
    master.clock = 10.0
    order = []
    driver.shutdown(graceful=True, timeout=5.0, then=lambda: order.append(master.clock))
    assert master.signals() == [(PID, "SIGTERM")]
    assert order == [10.0]  # Gunicorn's workers are told right after the manager
    assert (driver.phase, driver.pid) == (Phase.STOPPED, 0)
    assert master.calls[-1][:2] == ("sweep", PID)  # the last word, once it is gone
    assert 10.7 <= master.clock < 10.8  # no longer than the manager took


def test_a_manager_that_overruns_the_shutdown_timeout_is_killed():
    driver, master = booted_driver(stop_takes=None)  # it ignores TERM
    driver.shutdown(graceful=True, timeout=3.04)
    assert master.signals() == [(PID, "SIGTERM"), (PID, "SIGKILL")]
    assert ("error", "Companion manager did not stop in 3.0s; killing it") in master.log.lines
    assert driver.phase is Phase.STOPPED
    # killed when the timeout ran out, not a polling interval later
    assert 3.14 <= master.signalled_at("SIGKILL") < 3.14 + 1e-6  # booted at 0.1


def test_a_quick_shutdown_requested_during_a_graceful_one_hurries_the_manager_once():
    driver, master = booted_driver(stop_takes=None)
    asked = []

    def quick_requested():
        asked.append(master.clock)
        return master.clock >= 1.0

    driver.shutdown(graceful=True, timeout=3.0, quick_requested=quick_requested)
    assert master.signals() == [(PID, "SIGTERM"), (PID, "SIGQUIT"), (PID, "SIGKILL")]
    assert master.log.lines.count(("info", "Quick shutdown requested")) == 1
    assert max(asked) < 1.2  # asked no more once it hurried
    quick = ManagerDriver(ScriptedMaster(Script(stop_takes=0.2)))
    quick.start_at_boot()
    quick.shutdown(graceful=False, timeout=3.0, quick_requested=lambda: 1 / 0)
    assert quick.host.signals() == [(PID, "SIGQUIT")]


def test_a_shutdown_with_no_manager_running_still_sweeps_the_last_tree():
    driver, master = booted_driver(exits_after=1.0, tree_lingers=10.0, sweep_takes=60.0)
    master.clock = 1.0
    driver.claim()
    driver.maintain(wanted=True)  # DRAINING, its session swept
    driver.shutdown(graceful=True, timeout=30.0)
    assert master.signals() == []
    assert master.swept() == [PID, PID]
    assert driver.phase is Phase.STOPPED
    assert master.clock == 1.0 + KILL_WAIT  # waits a little, not forever, for the tree


def test_wait_exit_says_whether_the_manager_was_reaped_in_time():
    driver, master = booted_driver(exits_after=2.0)
    assert driver.wait_exit(1.0) is False
    assert master.clock >= 1.0 and driver.phase is Phase.UP
    assert driver.wait_exit(5.0) is True
    assert 2.0 <= master.clock < 2.1 and driver.phase is Phase.DRAINING


def test_what_a_dead_manager_left_unread_on_its_lifeline_does_not_delay_its_replacement():
    driver, master = booted_driver(lines=((0.1, READY), (0.5, b"STATUS=busy\n"),
                                          (0.6, b"STATUS=busier\n")), exits_after=1.0)
    master.clock = 1.0  # it wrote news the master never read, then died
    driver.claim()
    driver.maintain(wanted=True)
    assert driver.phase is Phase.IDLE  # read to the lifeline's end in one turn


def test_the_master_notices_its_managers_exit_while_companions_still_hold_the_lifeline():
    driver, master = booted_driver(stop_takes=0.7, tree_lingers=30.0)
    master.clock = 10.0
    driver.shutdown(graceful=True, timeout=20.0)
    swept_at = next(c[2] for c in master.calls if c[0] == "sweep")
    assert 10.7 <= swept_at <= 10.75  # polled, not woken by the lifeline's EOF
