"""Table tests for the master's pure record of its manager (handle.py).

No processes, no clock: each row is a handle, an event and what ``step``
must return; the invariants are checked on every row.
"""

from __future__ import annotations

import signal
from dataclasses import fields, replace

import pytest

from gunicorn_companion.handle import (
    BOOT_TIMEOUT,
    HEALTHY_UPTIME,
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
