"""Table tests for the pure companion state machine in lifecycle.py.

No processes, no clock: every test builds a Record, feeds ``step`` an event
with an explicit ``now`` and checks the record and actions it gets back.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace

import pytest

from gunicorn_companion.lifecycle import (
    Exited,
    ExitStatus,
    Kill,
    Log,
    Reconfigure,
    Record,
    Restart,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    Stop,
    Tick,
    step,
)
from gunicorn_companion.spec import CompanionSpec
from gunicorn_companion.states import PROCESS_STATES, State

# Distinct numbers for every timing knob, so a test notices the wrong one used.
SPEC = CompanionSpec(
    name="w", target="m:f", stop_signal=int(signal.SIGTERM), stop_timeout=10.0,
    reload_timeout=7.0, startsecs=2.0, restart_delay=3.0,
)
# What a reread might produce: other signal, other timings, no settling time.
NEW = replace(SPEC, target="m:g", stop_signal=int(signal.SIGINT), stop_timeout=20.0,
              reload_timeout=4.0, startsecs=0.0, restart_delay=5.0)

NOW = 100.0
PID = 42
KILL = int(signal.SIGKILL)
TERM = int(signal.SIGTERM)

EXIT_1 = ExitStatus(code=1)
EXIT_0 = ExitStatus(code=0)
BY_KILL = ExitStatus(signal=KILL)

# One record per situation the machine can be in.
STOPPED = Record(SPEC)
STOPPED_BY_HAND = Record(SPEC, state=State.STOPPED, wanted=False, last_exit=EXIT_0)
FATAL = Record(SPEC, state=State.FATAL, wanted=False, restarts=5)
FORKING = Record(SPEC, state=State.STARTING, wanted=True, started_at=NOW)  # no pid yet
STARTING = Record(SPEC, state=State.STARTING, pid=PID, wanted=True, started_at=99.0,
                  deadline=101.0)
RUNNING = Record(SPEC, state=State.RUNNING, pid=PID, wanted=True, started_at=50.0)
BACKOFF = Record(SPEC, state=State.BACKOFF, wanted=True, deadline=103.0, restarts=2,
                 last_exit=EXIT_1)
STOPPING = Record(SPEC, state=State.STOPPING, pid=PID, wanted=False, started_at=50.0,
                  deadline=110.0)
RESTARTING = replace(STOPPING, wanted=True)  # STOPPING on the way to a restart
KILLED = replace(STOPPING, deadline=None, killed=True)  # SIGKILL already sent


def others(actions):
    """The actions that are not Log lines, in order."""
    return [a for a in actions if not isinstance(a, Log)]


def logs(actions):
    return [a for a in actions if isinstance(a, Log)]


def changed(before: Record, after: Record) -> dict:
    """Which fields ``step`` changed, as {field: new value}."""
    return {
        f: getattr(after, f)
        for f in before.__dataclass_fields__
        if getattr(after, f) != getattr(before, f)
    }


# -- the transition table ---------------------------------------------------------
#
# (record, event, now, fields changed, non-Log actions, Log levels)

TRANSITIONS = [
    # Start
    pytest.param(STOPPED, Start(), NOW,
                 {"state": State.STARTING, "wanted": True, "started_at": NOW},
                 [Spawn("w")], [], id="Start:STOPPED->STARTING"),
    pytest.param(BACKOFF, Start(), NOW,
                 {"state": State.STARTING, "deadline": None, "started_at": NOW},
                 [Spawn("w")], [], id="Start:BACKOFF->STARTING"),
    pytest.param(FATAL, Start(), NOW,
                 {"state": State.STARTING, "wanted": True, "started_at": NOW},
                 [Spawn("w")], [], id="Start:FATAL->STARTING"),
    pytest.param(STARTING, Start(), NOW, {}, [], [], id="Start:STARTING-noop"),
    pytest.param(RUNNING, Start(), NOW, {}, [], [], id="Start:RUNNING-noop"),
    pytest.param(STOPPING, Start(), NOW, {"wanted": True}, [], [], id="Start:STOPPING-wants"),
    # Spawned
    pytest.param(FORKING, Spawned(PID), NOW, {"pid": PID, "deadline": NOW + 2.0},
                 [], [logging.INFO], id="Spawned:STARTING-deadline"),
    pytest.param(replace(FORKING, spec=NEW), Spawned(PID), NOW,
                 {"pid": PID, "state": State.RUNNING},
                 [], [logging.INFO], id="Spawned:startsecs0->RUNNING"),
    # Tick
    pytest.param(STARTING, Tick(), 100.99, {}, [], [], id="Tick:STARTING-early"),
    pytest.param(STARTING, Tick(), 101.0, {"state": State.RUNNING, "deadline": None},
                 [], [logging.INFO], id="Tick:STARTING->RUNNING-at"),
    pytest.param(STARTING, Tick(), 500.0, {"state": State.RUNNING, "deadline": None},
                 [], [logging.INFO], id="Tick:STARTING->RUNNING-late"),
    pytest.param(BACKOFF, Tick(), 102.0, {}, [], [], id="Tick:BACKOFF-early"),
    pytest.param(BACKOFF, Tick(), 103.0,
                 {"state": State.STARTING, "deadline": None, "restarts": 3, "started_at": 103.0},
                 [Spawn("w")], [], id="Tick:BACKOFF->STARTING"),
    pytest.param(STOPPING, Tick(), 109.0, {}, [], [], id="Tick:STOPPING-early"),
    pytest.param(STOPPING, Tick(), 110.0, {"deadline": None, "killed": True},
                 [Kill("w", PID, KILL)], [logging.WARNING], id="Tick:STOPPING-SIGKILL"),
    pytest.param(KILLED, Tick(), 200.0, {}, [], [], id="Tick:STOPPING-killed-once"),
    pytest.param(RUNNING, Tick(), NOW, {}, [], [], id="Tick:RUNNING-stale"),
    pytest.param(STOPPED, Tick(), NOW, {}, [], [], id="Tick:STOPPED-stale"),
    pytest.param(FATAL, Tick(), NOW, {}, [], [], id="Tick:FATAL-stale"),
    # Exited
    pytest.param(STARTING, Exited(EXIT_1), NOW,
                 {"state": State.BACKOFF, "pid": None, "deadline": NOW + 3.0,
                  "last_exit": EXIT_1, "failures": 1},
                 [], [logging.ERROR], id="Exited:STARTING->BACKOFF"),
    pytest.param(RUNNING, Exited(BY_KILL), NOW,
                 {"state": State.BACKOFF, "pid": None, "deadline": NOW + 3.0,
                  "last_exit": BY_KILL},
                 [], [logging.ERROR], id="Exited:RUNNING->BACKOFF"),
    pytest.param(STOPPING, Exited(EXIT_0), NOW,
                 {"state": State.STOPPED, "pid": None, "deadline": None, "last_exit": EXIT_0},
                 [], [logging.INFO], id="Exited:STOPPING->STOPPED"),
    pytest.param(KILLED, Exited(BY_KILL), NOW,
                 {"state": State.STOPPED, "pid": None, "killed": False, "last_exit": BY_KILL},
                 [], [logging.INFO], id="Exited:STOPPING-killed->STOPPED"),
    pytest.param(RESTARTING, Exited(EXIT_0), NOW,
                 {"state": State.STARTING, "pid": None, "deadline": None, "last_exit": EXIT_0,
                  "started_at": NOW},
                 [Spawn("w")], [logging.INFO], id="Exited:STOPPING-wanted->STARTING"),
    # Stop
    pytest.param(RUNNING, Stop(), NOW,
                 {"state": State.STOPPING, "wanted": False, "deadline": NOW + 10.0},
                 [Kill("w", PID, TERM)], [], id="Stop:RUNNING->STOPPING"),
    pytest.param(STARTING, Stop(), NOW,
                 {"state": State.STOPPING, "wanted": False, "deadline": NOW + 10.0},
                 [Kill("w", PID, TERM)], [], id="Stop:STARTING->STOPPING"),
    pytest.param(replace(RUNNING, spec=NEW), Stop(), NOW,
                 {"state": State.STOPPING, "wanted": False, "deadline": NOW + 20.0},
                 [Kill("w", PID, int(signal.SIGINT))], [], id="Stop:own-signal"),
    pytest.param(BACKOFF, Stop(), NOW,
                 {"state": State.STOPPED, "wanted": False, "deadline": None},
                 [], [], id="Stop:BACKOFF->STOPPED"),
    pytest.param(STOPPED, Stop(), NOW, {}, [], [], id="Stop:STOPPED-noop"),
    pytest.param(FATAL, Stop(), NOW, {}, [], [], id="Stop:FATAL-noop"),
    pytest.param(STOPPING, Stop(), NOW, {}, [], [], id="Stop:STOPPING-noop"),
    pytest.param(RESTARTING, Stop(), NOW, {"wanted": False}, [], [],
                 id="Stop:STOPPING-cancels-restart"),
    pytest.param(RUNNING, Stop(quick=True), NOW,
                 {"state": State.STOPPING, "wanted": False, "killed": True},
                 [Kill("w", PID, KILL)], [], id="Stop-quick:RUNNING->SIGKILL"),
    pytest.param(STARTING, Stop(quick=True), NOW,
                 {"state": State.STOPPING, "wanted": False, "killed": True, "deadline": None},
                 [Kill("w", PID, KILL)], [], id="Stop-quick:STARTING->SIGKILL"),
    pytest.param(STOPPING, Stop(quick=True), NOW, {"killed": True, "deadline": None},
                 [Kill("w", PID, KILL)], [], id="Stop-quick:STOPPING-escalates"),
    pytest.param(KILLED, Stop(quick=True), NOW, {}, [], [], id="Stop-quick:killed-once"),
    pytest.param(BACKOFF, Stop(quick=True), NOW,
                 {"state": State.STOPPED, "wanted": False, "deadline": None},
                 [], [], id="Stop-quick:BACKOFF->STOPPED"),
    # Restart
    pytest.param(RUNNING, Restart(), NOW,
                 {"state": State.STOPPING, "deadline": NOW + 7.0},
                 [Kill("w", PID, TERM)], [], id="Restart:RUNNING-reload_timeout"),
    pytest.param(STARTING, Restart(), NOW,
                 {"state": State.STOPPING, "deadline": NOW + 7.0},
                 [Kill("w", PID, TERM)], [], id="Restart:STARTING-reload_timeout"),
    pytest.param(STOPPED, Restart(), NOW,
                 {"state": State.STARTING, "wanted": True, "started_at": NOW},
                 [Spawn("w")], [], id="Restart:STOPPED->STARTING"),
    pytest.param(BACKOFF, Restart(), NOW,
                 {"state": State.STARTING, "deadline": None, "started_at": NOW},
                 [Spawn("w")], [], id="Restart:BACKOFF->STARTING"),
    pytest.param(FATAL, Restart(), NOW,
                 {"state": State.STARTING, "wanted": True, "started_at": NOW},
                 [Spawn("w")], [], id="Restart:FATAL->STARTING"),
    pytest.param(STOPPING, Restart(), NOW, {"wanted": True}, [], [], id="Restart:STOPPING-wants"),
    # Reconfigure
    pytest.param(RUNNING, Reconfigure(NEW), NOW,
                 {"state": State.STOPPING, "next_spec": NEW, "deadline": NOW + 7.0},
                 [Kill("w", PID, TERM)], [], id="Reconfigure:RUNNING-old-signal"),
    pytest.param(STARTING, Reconfigure(NEW), NOW,
                 {"state": State.STOPPING, "next_spec": NEW, "deadline": NOW + 7.0},
                 [Kill("w", PID, TERM)], [], id="Reconfigure:STARTING-old-signal"),
    pytest.param(STOPPED_BY_HAND, Reconfigure(NEW), NOW, {"spec": NEW}, [], [],
                 id="Reconfigure:STOPPED-by-hand-swaps"),
    pytest.param(FATAL, Reconfigure(NEW), NOW, {"spec": NEW}, [], [],
                 id="Reconfigure:FATAL-unwanted-swaps"),
    pytest.param(BACKOFF, Reconfigure(NEW), NOW,
                 {"state": State.STARTING, "spec": NEW, "deadline": None, "started_at": NOW},
                 [Spawn("w")], [], id="Reconfigure:BACKOFF->STARTING"),
    pytest.param(STOPPING, Reconfigure(NEW), NOW, {"next_spec": NEW}, [], [],
                 id="Reconfigure:STOPPING-by-hand"),
    pytest.param(RESTARTING, Reconfigure(NEW), NOW, {"next_spec": NEW}, [], [],
                 id="Reconfigure:STOPPING-restart"),
    # SpawnFailed
    pytest.param(FORKING, SpawnFailed("No such file or directory: '/x/out.log'"), NOW,
                 {"state": State.BACKOFF, "deadline": NOW + 3.0},
                 [], [logging.ERROR], id="SpawnFailed:STARTING->BACKOFF"),
]


@pytest.mark.parametrize("before, event, now, fields, actions, levels", TRANSITIONS)
def test_transition(before, event, now, fields, actions, levels):
    after, got = step(before, event, now)
    assert changed(before, after) == fields
    assert others(got) == actions
    assert [log.level for log in logs(got)] == levels


@pytest.mark.parametrize("before, event, now, fields, actions, levels", TRANSITIONS)
def test_step_does_not_touch_its_input(before, event, now, fields, actions, levels):
    copy = replace(before)
    step(before, event, now)
    assert before == copy


@pytest.mark.parametrize("before, event, now, fields, actions, levels", TRANSITIONS)
def test_invariants_after_every_transition(before, event, now, fields, actions, levels):
    after, got = step(before, event, now)
    # a pid exactly while a process may exist (STARTING is pid-less until Spawned)
    if after.state not in PROCESS_STATES:
        assert after.pid is None
    if after.state in (State.RUNNING, State.STOPPING):
        assert after.pid is not None
    # a Spawn always leaves a fresh, pid-less STARTING record behind
    if any(isinstance(a, Spawn) for a in got):
        assert (after.state, after.pid, after.killed) == (State.STARTING, None, False)
    # every Kill is aimed at the process the record knew about
    for kill in (a for a in got if isinstance(a, Kill)):
        assert (kill.name, kill.pid) == (before.name, before.pid)
    # states that wait for nothing have no deadline
    if after.state in (State.STOPPED, State.FATAL, State.RUNNING):
        assert after.deadline is None


# -- the log lines ----------------------------------------------------------------


@pytest.mark.parametrize(
    "status, how",
    [
        (ExitStatus(code=1), "exit code 1"),
        (ExitStatus(code=0), "exit code 0"),
        (ExitStatus(signal=KILL), "signal SIGKILL"),
        (ExitStatus(signal=int(signal.SIGSEGV)), "signal SIGSEGV"),
    ],
)
@pytest.mark.parametrize("record", [STARTING, RUNNING], ids=["STARTING", "RUNNING"])
def test_unexpected_exit_logs_an_error_naming_pid_and_status(record, status, how):
    _, actions = step(record, Exited(status), NOW)
    assert actions == [
        Log(logging.ERROR,
            f"companion 'w' (pid 42) exited unexpectedly with {how}; restarting in 3s")
    ]


def test_spawn_failed_logs_reason_and_delay():
    _, actions = step(FORKING, SpawnFailed("Permission denied: '/var/log/x'"), NOW)
    assert actions == [
        Log(logging.ERROR, "companion 'w' could not be started: Permission denied: "
                           "'/var/log/x'; retrying in 3s")
    ]


@pytest.mark.parametrize(
    "record, status, message",
    [
        (STOPPING, EXIT_0, "companion 'w' (pid 42) stopped (exit code 0)"),
        (KILLED, BY_KILL, "companion 'w' (pid 42) stopped (signal SIGKILL)"),
        (RESTARTING, ExitStatus(signal=TERM),
         "companion 'w' (pid 42) stopped (signal SIGTERM); starting it again"),
    ],
)
def test_stop_exit_logs(record, status, message):
    _, actions = step(record, Exited(status), NOW)
    assert logs(actions) == [Log(logging.INFO, message)]
    # the log line comes before the Spawn of the restart
    assert isinstance(actions[0], Log)


def test_escalation_log_comes_before_the_kill():
    _, actions = step(STOPPING, Tick(), 110.0)
    assert actions == [
        Log(logging.WARNING,
            "companion 'w' (pid 42) did not exit in time after SIGTERM; sending SIGKILL"),
        Kill("w", PID, KILL),
    ]


@pytest.mark.parametrize(
    "record, event, now, message",
    [
        (FORKING, Spawned(PID), NOW, "companion 'w' (pid 42) starting"),
        (replace(FORKING, spec=NEW), Spawned(PID), NOW, "companion 'w' (pid 42) started"),
        (STARTING, Tick(), 101.0, "companion 'w' (pid 42) is RUNNING"),
    ],
)
def test_start_logs(record, event, now, message):
    assert step(record, event, now)[1] == [Log(logging.INFO, message)]


def test_escalation_after_reconfigure_names_the_signal_that_was_sent():
    stopping, actions = step(RUNNING, Reconfigure(NEW), NOW)
    assert others(actions) == [Kill("w", PID, TERM)]
    _, actions = step(stopping, Tick(), stopping.deadline)
    assert "after SIGTERM" in logs(actions)[0].message


# -- things that cannot happen ----------------------------------------------------


@pytest.mark.parametrize("record", [STOPPED, BACKOFF, FATAL], ids=["STOPPED", "BACKOFF", "FATAL"])
def test_exit_without_a_process_is_a_bug(record):
    with pytest.raises(AssertionError):
        step(record, Exited(EXIT_0), NOW)


@pytest.mark.parametrize("record", [STOPPED, RUNNING, STARTING], ids=["STOPPED", "RUNNING",
                                                                       "STARTING-with-pid"])
def test_spawned_only_for_a_pidless_starting_record(record):
    with pytest.raises(AssertionError):
        step(record, Spawned(7), NOW)


def test_unknown_event_type():
    with pytest.raises(KeyError):
        step(STOPPED, object(), NOW)  # type: ignore[arg-type]


# -- Spawned, more precisely ------------------------------------------------------


@pytest.mark.parametrize("startsecs, state, deadline", [
    (2.0, State.STARTING, 102.0),
    (0.5, State.STARTING, 100.5),
    (0.0, State.RUNNING, None),
])
def test_spawned_deadline_is_now_plus_startsecs(startsecs, state, deadline):
    record = replace(FORKING, spec=replace(SPEC, startsecs=startsecs), started_at=95.0)
    after, _ = step(record, Spawned(PID), NOW)
    assert (after.state, after.pid, after.deadline, after.started_at) == (
        state, PID, deadline, NOW
    )


# -- Reconfigure end to end --------------------------------------------------------


def test_reconfigure_running_stops_old_then_starts_new():
    record, actions = step(RUNNING, Reconfigure(NEW), NOW)
    # the old process stops as the OLD spec says: SIGTERM, reload_timeout 7
    assert others(actions) == [Kill("w", PID, TERM)]
    assert (record.state, record.deadline, record.next_spec, record.wanted) == (
        State.STOPPING, NOW + 7.0, NEW, True
    )
    assert record.spec != NEW  # status shows what the running process was started with
    record, actions = step(record, Exited(ExitStatus(signal=TERM)), 101.0)
    assert others(actions) == [Spawn("w")]
    assert (record.state, record.spec, record.pid) == (State.STARTING, NEW, None)
    # the new spec's startsecs (0) applies to the new process
    record, _ = step(record, Spawned(43), 101.0)
    assert (record.state, record.pid, record.deadline) == (State.RUNNING, 43, None)
    # and its stop signal / stop_timeout from now on
    record, actions = step(record, Stop(), 200.0)
    assert others(actions) == [Kill("w", 43, int(signal.SIGINT))]
    assert record.deadline == 220.0


def test_reconfigure_stopped_by_hand_stays_stopped():
    record, _ = step(RUNNING, Stop(), NOW)
    record, _ = step(record, Exited(EXIT_0), 101.0)
    assert record.state == State.STOPPED
    record, actions = step(record, Reconfigure(NEW), 102.0)
    assert (record.state, record.spec, record.wanted, actions) == (State.STOPPED, NEW, False, [])
    record, actions = step(record, Tick(), 1000.0)
    assert (record.state, actions) == (State.STOPPED, [])
    # a later start uses the new spec
    record, actions = step(record, Start(), 1001.0)
    assert (record.state, record.spec, actions) == (State.STARTING, NEW, [Spawn("w")])


def test_reconfigure_in_backoff_does_not_wait_out_the_old_delay():
    record, actions = step(BACKOFF, Reconfigure(NEW), 100.5)
    assert (record.state, record.spec, record.restarts, others(actions)) == (
        State.STARTING, NEW, BACKOFF.restarts, [Spawn("w")]
    )


# -- stop escalation, the whole way -----------------------------------------------


ESCALATION = [
    (Stop(), 10.0, State.STOPPING, [Kill("w", PID, TERM)]),
    (Tick(), 19.99, State.STOPPING, []),
    (Tick(), 20.0, State.STOPPING, [Kill("w", PID, KILL)]),
    (Tick(), 20.5, State.STOPPING, []),
    (Stop(quick=True), 21.0, State.STOPPING, []),
    (Stop(), 21.5, State.STOPPING, []),
    (Exited(BY_KILL), 22.0, State.STOPPED, []),
    (Tick(), 30.0, State.STOPPED, []),
]

QUICK_AFTER_GRACEFUL = [
    (Stop(), 10.0, State.STOPPING, [Kill("w", PID, TERM)]),
    (Stop(quick=True), 12.0, State.STOPPING, [Kill("w", PID, KILL)]),
    (Tick(), 20.0, State.STOPPING, []),
    (Exited(BY_KILL), 20.1, State.STOPPED, []),
]


def replay(record, script):
    """Feed (event, now, expected state, expected non-Log actions) steps through step()."""
    for index, (event, now, state, actions) in enumerate(script):
        record, got = step(record, event, now)
        assert (index, record.state, others(got)) == (index, state, actions), event
    return record


@pytest.mark.parametrize("script", [ESCALATION, QUICK_AFTER_GRACEFUL],
                         ids=["tick-escalates-once", "quick-overtakes-graceful"])
def test_stop_escalation(script):
    record = replay(RUNNING, script)
    assert (record.pid, record.killed, record.deadline, record.wanted) == (None, False, None, False)


# -- scripted histories -----------------------------------------------------------

BOOT_CRASH_STOP = [
    # boot
    (Start(), 0.0, State.STARTING, [Spawn("w")]),
    (Spawned(100), 0.0, State.STARTING, []),
    (Tick(), 1.0, State.STARTING, []),
    (Tick(), 2.0, State.RUNNING, []),
    # crash, back off, restart
    (Exited(ExitStatus(code=1)), 50.0, State.BACKOFF, []),
    (Tick(), 52.0, State.BACKOFF, []),
    (Tick(), 53.0, State.STARTING, [Spawn("w")]),
    (Spawned(101), 53.0, State.STARTING, []),
    (Tick(), 55.0, State.RUNNING, []),
    # stop by hand: it stays stopped whatever the clock does
    (Stop(), 60.0, State.STOPPING, [Kill("w", 101, TERM)]),
    (Exited(ExitStatus(signal=TERM)), 61.0, State.STOPPED, []),
    (Tick(), 70.0, State.STOPPED, []),
    (Tick(), 1000.0, State.STOPPED, []),
    # and starts again when asked
    (Start(), 1001.0, State.STARTING, [Spawn("w")]),
]

CRASH_LOOP = [
    (Start(), 0.0, State.STARTING, [Spawn("w")]),
    (Spawned(1), 0.0, State.STARTING, []),
    (Exited(ExitStatus(code=2)), 0.5, State.BACKOFF, []),  # died before startsecs
    (Tick(), 3.5, State.STARTING, [Spawn("w")]),
    (SpawnFailed("Too many open files"), 3.5, State.BACKOFF, []),
    (Tick(), 6.5, State.STARTING, [Spawn("w")]),
    (Spawned(2), 6.5, State.STARTING, []),
    (Exited(ExitStatus(signal=int(signal.SIGSEGV))), 7.0, State.BACKOFF, []),
    (Stop(), 8.0, State.STOPPED, []),  # stop during backoff: no restart
    (Tick(), 10.0, State.STOPPED, []),
]

RESTART_COMMAND = [
    (Start(), 0.0, State.STARTING, [Spawn("w")]),
    (Spawned(1), 0.0, State.STARTING, []),
    (Tick(), 2.0, State.RUNNING, []),
    (Restart(), 10.0, State.STOPPING, [Kill("w", 1, TERM)]),
    (Tick(), 16.0, State.STOPPING, []),
    (Tick(), 17.0, State.STOPPING, [Kill("w", 1, KILL)]),  # reload_timeout is 7
    (Exited(BY_KILL), 17.5, State.STARTING, [Spawn("w")]),
    (Spawned(2), 17.5, State.STARTING, []),
    (Tick(), 19.5, State.RUNNING, []),
]

START_WHILE_STOPPING = [
    (Start(), 0.0, State.STARTING, [Spawn("w")]),
    (Spawned(1), 0.0, State.STARTING, []),
    (Stop(), 1.0, State.STOPPING, [Kill("w", 1, TERM)]),  # stopped before it settled
    (Start(), 2.0, State.STOPPING, []),  # waits for the exit
    (Exited(EXIT_0), 3.0, State.STARTING, [Spawn("w")]),
    (Spawned(2), 3.0, State.STARTING, []),
    (Tick(), 5.0, State.RUNNING, []),
]


@pytest.mark.parametrize(
    "script, restarts",
    [
        (BOOT_CRASH_STOP, 1),
        (CRASH_LOOP, 2),
        (RESTART_COMMAND, 0),
        (START_WHILE_STOPPING, 0),
    ],
    ids=["boot-crash-stop", "crash-loop", "restart-command", "start-while-stopping"],
)
def test_scripted_history(script, restarts):
    record = replay(STOPPED, script)
    assert record.restarts == restarts


def test_history_timestamps():
    record = STOPPED
    record, _ = step(record, Start(), 0.0)
    record, _ = step(record, Spawned(100), 0.25)
    assert (record.started_at, record.deadline) == (0.25, 2.25)
    record, _ = step(record, Tick(), 2.25)
    record, _ = step(record, Exited(ExitStatus(code=1)), 50.0)
    assert (record.deadline, record.last_exit) == (53.0, ExitStatus(code=1))
    record, _ = step(record, Tick(), 53.0)
    assert (record.started_at, record.restarts) == (53.0, 1)


# -- ExitStatus -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, status, text, as_json",
    [
        (0, ExitStatus(code=0), "exit code 0", {"code": 0}),
        (3 << 8, ExitStatus(code=3), "exit code 3", {"code": 3}),
        (255 << 8, ExitStatus(code=255), "exit code 255", {"code": 255}),
        (9, ExitStatus(signal=9), "signal SIGKILL", {"signal": "SIGKILL"}),
        (15, ExitStatus(signal=15), "signal SIGTERM", {"signal": "SIGTERM"}),
        (0x80 | 11, ExitStatus(signal=11), "signal SIGSEGV", {"signal": "SIGSEGV"}),  # core dumped
        (int(signal.SIGRTMIN), ExitStatus(signal=int(signal.SIGRTMIN)), "signal SIGRTMIN",
         {"signal": "SIGRTMIN"}),
    ],
)
def test_exit_status_from_wait_status(raw, status, text, as_json):
    got = ExitStatus.from_wait_status(raw)
    assert got == status
    assert got.describe() == text
    assert got.as_json() == as_json
    # agrees with the standard library's reading of the same status
    expected = os.waitstatus_to_exitcode(raw)
    assert (got.code if got.signal is None else -got.signal) == expected
    assert (got.code is None) != (got.signal is None)


@pytest.mark.parametrize(
    "status, name",
    [
        (ExitStatus(code=1), None),
        (ExitStatus(signal=2), "SIGINT"),
        (ExitStatus(signal=15), "SIGTERM"),
    ],
)
def test_signal_name(status, name):
    assert status.signal_name == name


def _unnamed_signal() -> int:
    named = {s.value for s in signal.Signals}
    return next(n for n in range(1, 128) if n not in named)


def test_unnamed_signal_keeps_its_number():
    number = _unnamed_signal()
    status = ExitStatus.from_wait_status(number)
    assert status.signal == number
    assert status.signal_name == f"signal {number}"
    assert str(number) in status.describe()


def test_unnamed_signal_describe_says_signal_once():
    number = _unnamed_signal()
    assert ExitStatus.from_wait_status(number).describe() == f"signal {number}"
