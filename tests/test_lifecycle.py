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
    Notified,
    Reconfigure,
    Record,
    Recycle,
    Restart,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    Stop,
    Stopping,
    Tick,
    backoff_delay,
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

# The newer knobs, one spec each, so a row names the feature it pins.
LOOP = replace(SPEC, max_restart_delay=20.0, startretries=3)  # restart_delay 3: 3, 6, 12, 20
LIFE = replace(SPEC, max_lifetime=100.0, max_lifetime_jitter=20.0)
WATCHED = replace(SPEC, watchdog_timeout=5.0)
READY = replace(SPEC, wait_ready=True)
SINGLE = replace(SPEC, singleton=True)
INT = int(signal.SIGINT)

# a crash loop after two failed starts: waiting to retry, and retrying
LOOP_BACKOFF = Record(LOOP, state=State.BACKOFF, wanted=True, deadline=103.0, restarts=2,
                      last_exit=EXIT_1, failures=2)
LOOP_STARTING = Record(LOOP, state=State.STARTING, pid=PID, wanted=True, started_at=99.0,
                       deadline=101.0, restarts=2, last_exit=EXIT_1, failures=2)
LOOP_STOPPING = Record(LOOP, state=State.STOPPING, pid=PID, wanted=False, started_at=99.0,
                       deadline=110.0, restarts=3, last_exit=EXIT_0, failures=3)
GAVE_UP = Record(LOOP, state=State.FATAL, wanted=True, restarts=3, last_exit=EXIT_1, failures=4)
# RUNNING with timers armed
AGED = Record(LIFE, state=State.RUNNING, pid=PID, wanted=True, started_at=0.0,
              lifetime_at=110.0, deadline=110.0)
WATCHED_RUNNING = Record(WATCHED, state=State.RUNNING, pid=PID, wanted=True, started_at=50.0,
                         watchdog_at=106.0, deadline=106.0)
TIMED = Record(replace(SPEC, max_lifetime=100.0, watchdog_timeout=5.0), state=State.RUNNING,
               pid=PID, wanted=True, started_at=50.0, lifetime_at=150.0, watchdog_at=106.0,
               deadline=106.0)
# STARTING with a live process that waits for news instead of a deadline
WAITING_READY = Record(READY, state=State.STARTING, pid=PID, wanted=True, started_at=99.0,
                       waiting="ready()")
LOCK_WAIT = Record(SINGLE, state=State.STARTING, pid=PID, wanted=True, started_at=99.0,
                   waiting="singleton lock")
LOCK_HELD_ELSEWHERE = replace(LOCK_WAIT, waiting="singleton lock held by another instance")


def others(actions):
    """The actions that are not Log lines, in order."""
    return [a for a in actions if not isinstance(a, Log)]


def logs(actions):
    return [a for a in actions if isinstance(a, Log)]


def changed(before: Record, after: Record) -> dict:
    """Which fields ``step`` changed, as {field: new value}; ``stopping`` (what
    status shows of a stop) has a table of its own, STOPPING_INFO."""
    return {
        f: getattr(after, f)
        for f in before.__dataclass_fields__
        if f != "stopping" and getattr(after, f) != getattr(before, f)
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
                 [Kill("w", PID, KILL, group=True)], [logging.WARNING], id="Tick:STOPPING-SIGKILL"),
    pytest.param(KILLED, Tick(), 200.0, {}, [], [], id="Tick:STOPPING-killed-once"),
    pytest.param(RUNNING, Tick(), NOW, {}, [], [], id="Tick:RUNNING-stale"),
    pytest.param(STOPPED, Tick(), NOW, {}, [], [], id="Tick:STOPPED-stale"),
    pytest.param(FATAL, Tick(), NOW, {}, [], [], id="Tick:FATAL-stale"),
    # Exited
    pytest.param(STARTING, Exited(EXIT_1), NOW,
                 {"down_since": NOW, "state": State.BACKOFF, "pid": None, "deadline": NOW + 3.0,
                  "last_exit": EXIT_1, "failures": 1},
                 [], [logging.ERROR], id="Exited:STARTING->BACKOFF"),
    pytest.param(RUNNING, Exited(BY_KILL), NOW,
                 {"down_since": NOW, "state": State.BACKOFF, "pid": None, "deadline": NOW + 3.0,
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
                 [Kill("w", PID, KILL, group=True)], [], id="Stop-quick:RUNNING->SIGKILL"),
    pytest.param(STARTING, Stop(quick=True), NOW,
                 {"state": State.STOPPING, "wanted": False, "killed": True, "deadline": None},
                 [Kill("w", PID, KILL, group=True)], [], id="Stop-quick:STARTING->SIGKILL"),
    pytest.param(STOPPING, Stop(quick=True), NOW, {"killed": True, "deadline": None},
                 [Kill("w", PID, KILL, group=True)], [], id="Stop-quick:STOPPING-escalates"),
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
                 {"down_since": NOW, "state": State.BACKOFF, "deadline": NOW + 3.0},
                 [], [logging.ERROR], id="SpawnFailed:STARTING->BACKOFF"),
    # Crash loops: failures, backoff, startretries
    pytest.param(LOOP_STARTING, Exited(EXIT_1), NOW,
                 {"down_since": NOW, "state": State.BACKOFF,
                  "pid": None, "deadline": NOW + 12.0, "failures": 3},
                 [], [logging.ERROR], id="Exited:crash-loop-3rd-failure-backs-off-12s"),
    pytest.param(replace(LOOP_STARTING, failures=3), Exited(EXIT_1), NOW,
                 {"down_since": NOW, "state": State.FATAL,
                  "pid": None, "deadline": None, "failures": 4},
                 [], [logging.ERROR], id="Exited:startretries3-4th-failure->FATAL"),
    pytest.param(replace(LOOP_STARTING, spec=replace(LOOP, startretries=None), failures=30),
                 Exited(EXIT_1), NOW,
                 {"down_since": NOW, "state": State.BACKOFF,
                  "pid": None, "deadline": NOW + 20.0, "failures": 31},
                 [], [logging.ERROR], id="Exited:startretries-None-never-FATAL"),
    pytest.param(replace(STARTING, spec=replace(SPEC, startretries=0)), Exited(EXIT_1), NOW,
                 {"down_since": NOW, "state": State.FATAL,
                  "pid": None, "deadline": None, "last_exit": EXIT_1,
                  "failures": 1},
                 [], [logging.ERROR], id="Exited:startretries0-first-failure->FATAL"),
    pytest.param(replace(RUNNING, spec=LOOP), Exited(EXIT_1, jitter=1.0), NOW,
                 {"down_since": NOW, "state": State.BACKOFF,
                  "pid": None, "deadline": NOW + 3.0, "last_exit": EXIT_1},
                 [], [logging.ERROR], id="Exited:RUNNING-plain-restart_delay"),
    pytest.param(LOOP_BACKOFF, Tick(), 103.0,
                 {"state": State.STARTING, "deadline": None, "restarts": 3, "started_at": 103.0},
                 [Spawn("w")], [], id="Tick:crash-loop-keeps-failures"),
    pytest.param(LOOP_BACKOFF, Start(), NOW,
                 {"state": State.STARTING, "deadline": None, "started_at": NOW, "failures": 0},
                 [Spawn("w")], [], id="Start:BACKOFF-resets-failures"),
    pytest.param(LOOP_BACKOFF, Restart(), NOW,
                 {"state": State.STARTING, "deadline": None, "started_at": NOW, "failures": 0},
                 [Spawn("w")], [], id="Restart:BACKOFF-resets-failures"),
    pytest.param(LOOP_BACKOFF, Reconfigure(NEW), NOW,
                 {"state": State.STARTING, "deadline": None, "started_at": NOW, "failures": 0,
                  "spec": NEW},
                 [Spawn("w")], [], id="Reconfigure:BACKOFF-resets-failures"),
    pytest.param(GAVE_UP, Start(), NOW,
                 {"state": State.STARTING, "started_at": NOW, "failures": 0},
                 [Spawn("w")], [], id="Start:FATAL-resets-failures"),
    pytest.param(GAVE_UP, Restart(), NOW,
                 {"state": State.STARTING, "started_at": NOW, "failures": 0},
                 [Spawn("w")], [], id="Restart:FATAL-resets-failures"),
    pytest.param(GAVE_UP, Reconfigure(NEW), NOW,
                 {"state": State.STARTING, "started_at": NOW, "failures": 0, "spec": NEW},
                 [Spawn("w")], [], id="Reconfigure:FATAL-wanted->STARTING"),
    pytest.param(GAVE_UP, Tick(), 10_000.0, {}, [], [], id="Tick:FATAL-stays"),
    pytest.param(GAVE_UP, Stop(), NOW, {"wanted": False}, [], [], id="Stop:FATAL-unwants"),
    pytest.param(LOOP_STARTING, Stop(), NOW,
                 {"state": State.STOPPING, "wanted": False, "deadline": NOW + 10.0},
                 [Kill("w", PID, TERM)], [], id="Stop:crash-loop-STARTING->STOPPING"),
    pytest.param(LOOP_STOPPING, Exited(EXIT_1), NOW,
                 {"state": State.STOPPED, "pid": None, "deadline": None, "last_exit": EXIT_1},
                 [], [logging.INFO], id="Exited:stopped-by-hand-is-no-failure"),
    # max_lifetime
    pytest.param(replace(FORKING, spec=LIFE), Spawned(PID, jitter=0.25), NOW,
                 {"pid": PID, "deadline": NOW + 2.0, "lifetime_at": NOW + 100.0 + 5.0},
                 [], [logging.INFO], id="Spawned:lifetime_at-with-jitter"),
    pytest.param(replace(FORKING, spec=replace(LIFE, startsecs=0.0)), Spawned(PID, jitter=0.5),
                 NOW,
                 {"pid": PID, "state": State.RUNNING, "lifetime_at": 210.0, "deadline": 210.0},
                 [], [logging.INFO], id="Spawned:startsecs0-RUNNING-deadline-is-lifetime"),
    pytest.param(AGED, Tick(), 109.99, {}, [], [], id="Tick:lifetime-early"),
    pytest.param(AGED, Tick(), 110.0,
                 {"state": State.STOPPING, "deadline": 120.0, "lifetime_at": None,
                  "last_recycle": "max_lifetime reached"},
                 [Kill("w", PID, TERM)], [logging.INFO], id="Tick:lifetime->STOPPING"),
    pytest.param(replace(AGED, spec=replace(LIFE, stop_signal=INT, stop_timeout=20.0)), Tick(),
                 111.0,
                 {"state": State.STOPPING, "deadline": 131.0, "lifetime_at": None,
                  "last_recycle": "max_lifetime reached"},
                 [Kill("w", PID, INT)], [logging.INFO], id="Tick:lifetime-own-stop-signal"),
    # Recycle
    pytest.param(RUNNING, Recycle("max_memory exceeded"), NOW,
                 {"state": State.STOPPING, "deadline": NOW + 10.0,
                  "last_recycle": "max_memory exceeded"},
                 [Kill("w", PID, TERM)], [logging.INFO], id="Recycle:RUNNING->STOPPING"),
    pytest.param(STARTING, Recycle("max_memory exceeded"), NOW,
                 {"state": State.STOPPING, "deadline": NOW + 10.0,
                  "last_recycle": "max_memory exceeded"},
                 [Kill("w", PID, TERM)], [logging.INFO], id="Recycle:STARTING->STOPPING"),
    pytest.param(TIMED, Recycle("why"), NOW,
                 {"state": State.STOPPING, "deadline": NOW + 10.0, "lifetime_at": None,
                  "watchdog_at": None, "last_recycle": "why"},
                 [Kill("w", PID, TERM)], [logging.INFO], id="Recycle:disarms-timers"),
    *[pytest.param(record, Recycle("why"), NOW, {}, [], [], id=f"Recycle:{label}-ignored")
      for record, label in [(STOPPED, "STOPPED"), (BACKOFF, "BACKOFF"), (FATAL, "FATAL"),
                            (STOPPING, "STOPPING"), (RESTARTING, "RESTARTING"),
                            (KILLED, "KILLED")]],
    # Readiness
    pytest.param(STARTING, Notified("ready"), 100.5,
                 {"state": State.RUNNING, "deadline": None},
                 [], [logging.INFO], id="Notified-ready:STARTING->RUNNING-before-startsecs"),
    pytest.param(replace(FORKING, spec=READY), Spawned(PID), NOW,
                 {"pid": PID, "waiting": "ready()"},
                 [], [logging.INFO], id="Spawned:wait_ready-no-deadline"),
    pytest.param(replace(FORKING, spec=replace(READY, startsecs=0.0)), Spawned(PID), NOW,
                 {"pid": PID, "waiting": "ready()"},
                 [], [logging.INFO], id="Spawned:wait_ready-beats-startsecs0"),
    pytest.param(WAITING_READY, Tick(), 10_000.0, {}, [], [], id="Tick:wait_ready-waits"),
    pytest.param(WAITING_READY, Notified("heartbeat"), NOW, {}, [], [],
                 id="Notified-heartbeat:wait_ready-waits"),
    pytest.param(WAITING_READY, Notified("lock-held"), NOW, {}, [], [],
                 id="Notified-lock-held:wait_ready-waits"),
    pytest.param(WAITING_READY, Notified("ready"), NOW,
                 {"state": State.RUNNING, "waiting": None},
                 [], [logging.INFO], id="Notified-ready:wait_ready->RUNNING"),
    pytest.param(RUNNING, Notified("ready"), NOW, {}, [], [], id="Notified-ready:RUNNING-noop"),
    pytest.param(STARTING, Notified("heartbeat"), NOW, {}, [], [],
                 id="Notified-heartbeat:STARTING-noop"),
    pytest.param(STARTING, Notified("nonsense"), NOW, {}, [], [], id="Notified-unknown-noop"),
    # Watchdog
    pytest.param(replace(STARTING, spec=WATCHED), Tick(), 101.0,
                 {"state": State.RUNNING, "watchdog_at": 106.0, "deadline": 106.0},
                 [], [logging.INFO], id="Tick:RUNNING-arms-watchdog"),
    pytest.param(replace(STARTING, spec=WATCHED), Notified("ready"), 100.5,
                 {"state": State.RUNNING, "watchdog_at": 105.5, "deadline": 105.5},
                 [], [logging.INFO], id="Notified-ready:RUNNING-arms-watchdog"),
    pytest.param(replace(FORKING, spec=replace(WATCHED, startsecs=0.0)), Spawned(PID), NOW,
                 {"pid": PID, "state": State.RUNNING, "watchdog_at": 105.0, "deadline": 105.0},
                 [], [logging.INFO], id="Spawned:startsecs0-arms-watchdog"),
    pytest.param(WATCHED_RUNNING, Notified("heartbeat"), 104.0,
                 {"watchdog_at": 109.0, "deadline": 109.0}, [], [],
                 id="Notified-heartbeat:pushes-watchdog"),
    pytest.param(TIMED, Notified("heartbeat"), 148.0, {"watchdog_at": 153.0, "deadline": 150.0},
                 [], [], id="Notified-heartbeat:lifetime-nearer"),
    pytest.param(RUNNING, Notified("heartbeat"), NOW, {}, [], [],
                 id="Notified-heartbeat:no-watchdog-noop"),
    pytest.param(WATCHED_RUNNING, Tick(), 105.99, {}, [], [], id="Tick:watchdog-early"),
    pytest.param(WATCHED_RUNNING, Tick(), 106.0,
                 {"state": State.STOPPING, "deadline": None, "killed": True, "watchdog_at": None,
                  "last_recycle": "watchdog", "restarts": 1},
                 [Kill("w", PID, KILL, group=True)], [logging.ERROR], id="Tick:watchdog-SIGKILL"),
    pytest.param(replace(WATCHED_RUNNING, spec=replace(WATCHED, stop_signal=INT)), Tick(), 107.0,
                 {"state": State.STOPPING, "deadline": None, "killed": True, "watchdog_at": None,
                  "last_recycle": "watchdog", "restarts": 1},
                 [Kill("w", PID, KILL, group=True)], [logging.ERROR],
                 id="Tick:watchdog-SIGKILL-not-stop_signal"),
    pytest.param(TIMED, Tick(), 106.0,
                 {"state": State.STOPPING, "deadline": None, "killed": True, "watchdog_at": None,
                  "lifetime_at": None, "last_recycle": "watchdog", "restarts": 1},
                 [Kill("w", PID, KILL, group=True)], [logging.ERROR],
                 id="Tick:watchdog-before-lifetime"),
    # Singletons
    pytest.param(replace(FORKING, spec=SINGLE), Spawned(PID), NOW,
                 {"pid": PID, "waiting": "singleton lock"}, [], [], id="Spawned:singleton-waits"),
    pytest.param(replace(FORKING, spec=replace(SINGLE, startsecs=0.0, max_lifetime=50.0)),
                 Spawned(PID), NOW,
                 {"pid": PID, "waiting": "singleton lock", "lifetime_at": 150.0}, [], [],
                 id="Spawned:singleton-startsecs0-still-waits"),
    pytest.param(LOCK_WAIT, Tick(), 10_000.0, {}, [], [], id="Tick:singleton-waits"),
    pytest.param(LOCK_WAIT, Notified("lock-wait"), NOW,
                 {"waiting": "singleton lock held by another instance"},
                 [], [logging.INFO], id="Notified-lock-wait"),
    pytest.param(LOCK_WAIT, Notified("lock-held"), NOW, {"waiting": None, "deadline": NOW + 2.0},
                 [], [logging.INFO], id="Notified-lock-held:settles"),
    pytest.param(LOCK_HELD_ELSEWHERE, Notified("lock-held"), NOW,
                 {"waiting": None, "deadline": NOW + 2.0},
                 [], [logging.INFO], id="Notified-lock-held-after-wait:settles"),
    pytest.param(replace(LOCK_WAIT, spec=replace(SINGLE, startsecs=0.0)), Notified("lock-held"),
                 NOW, {"state": State.RUNNING, "waiting": None},
                 [], [logging.INFO], id="Notified-lock-held:startsecs0->RUNNING"),
    pytest.param(replace(LOCK_WAIT, spec=replace(SINGLE, wait_ready=True)), Notified("lock-held"),
                 NOW, {"waiting": "ready()"},
                 [], [logging.INFO], id="Notified-lock-held:wait_ready"),
    pytest.param(LOCK_WAIT, Notified("ready"), NOW, {}, [], [],
                 id="Notified-ready:before-lock-ignored"),
    pytest.param(LOCK_HELD_ELSEWHERE, Notified("ready"), NOW, {}, [], [],
                 id="Notified-ready:before-lock-held-elsewhere-ignored"),
    pytest.param(STARTING, Notified("lock-held"), NOW, {}, [], [],
                 id="Notified-lock-held:not-waiting-noop"),
    pytest.param(RUNNING, Notified("lock-wait"), NOW, {}, [], [],
                 id="Notified-lock-wait:RUNNING-noop"),
    # News from a process the record no longer (or not yet) has
    *[pytest.param(record, Notified(what), NOW, {}, [], [], id=f"Notified-{what}:{label}-ignored")
      for what in ("ready", "heartbeat", "lock-wait", "lock-held")
      for record, label in [(FORKING, "no-pid"), (STOPPED, "STOPPED"), (BACKOFF, "BACKOFF"),
                            (FATAL, "FATAL"), (STOPPING, "STOPPING"),
                            (replace(STOPPING, spec=WATCHED), "STOPPING-watched")]],
]


# -- how a stop goes: the signal, its target, and what status shows of it ------------

GROUP = replace(SPEC, stop_as_group=True)
STOP_SENT = replace(STOPPING, stopping=Stopping(95.0, TERM, 10.0))

STOPPING_INFO = [
    # (record, event, now, Stopping after, non-Log actions)
    pytest.param(RUNNING, Stop(), NOW, Stopping(NOW, TERM, 10.0), [Kill("w", PID, TERM)],
                 id="stop:main-process-only"),
    pytest.param(replace(RUNNING, spec=GROUP), Stop(), NOW, Stopping(NOW, TERM, 10.0),
                 [Kill("w", PID, TERM, group=True)], id="stop:stop_as_group"),
    pytest.param(STARTING, Restart(), NOW, Stopping(NOW, TERM, 7.0), [Kill("w", PID, TERM)],
                 id="restart:reload_timeout"),
    pytest.param(RUNNING, Reconfigure(NEW), NOW, Stopping(NOW, TERM, 7.0),
                 [Kill("w", PID, TERM)], id="reconfigure:old-spec"),
    pytest.param(RUNNING, Stop(quick=True), NOW, Stopping(NOW, KILL, 0.0),
                 [Kill("w", PID, KILL, group=True)], id="quick:group-SIGKILL"),
    pytest.param(STOP_SENT, Stop(quick=True), NOW, Stopping(95.0, KILL, 10.0),
                 [Kill("w", PID, KILL, group=True)], id="quick-overtakes:keeps-since"),
    pytest.param(STOP_SENT, Tick(), 110.0, Stopping(95.0, KILL, 10.0),
                 [Kill("w", PID, KILL, group=True)], id="timeout:group-SIGKILL-keeps-since"),
    pytest.param(STOP_SENT, Exited(EXIT_0), 111.0, None, [], id="exited:cleared"),
    pytest.param(replace(STOP_SENT, wanted=True), Exited(EXIT_0), 111.0, None,
                 [Spawn("w")], id="restarted:cleared"),
    pytest.param(WATCHED_RUNNING, Tick(), 106.0, Stopping(106.0, KILL, 0.0),
                 [Kill("w", PID, KILL, group=True)], id="watchdog:group-SIGKILL"),
]


@pytest.mark.parametrize("before, event, now, stopping, actions", STOPPING_INFO)
def test_a_stop_sends_its_signal_to_the_right_target_and_records_it(before, event, now,
                                                                    stopping, actions):
    after, got = step(before, event, now)
    assert after.stopping == stopping
    assert others(got) == actions


def test_reload_timeout_left_unset_is_the_stop_timeout():
    spec = CompanionSpec(name="w", target="m:f", stop_timeout=1560.0)
    assert spec.reload_timeout == 1560.0
    after, _ = step(Record(spec, state=State.RUNNING, pid=PID, wanted=True), Restart(), NOW)
    assert after.deadline == NOW + 1560.0


@pytest.mark.parametrize("before, event, now, fields, actions, levels", TRANSITIONS)
def test_transition(before, event, now, fields, actions, levels):
    after, got = step(before, event, now)
    assert changed(before, after) == fields
    assert others(got) == actions
    assert [log.level for log in logs(got)] == levels


@pytest.mark.parametrize("before, event, now, fields, actions, levels", TRANSITIONS)
def test_step_is_a_function_of_immutable_values(before, event, now, fields, actions, levels):
    # Records, events and actions are frozen all the way down: hashing fails
    # on any field holding a list, dict or set, which `step` could change in
    # place behind a frozen dataclass's back.
    first = step(before, event, now)
    for value in (before, event, first[0], *first[1]):
        hash(value)
    # the same input gives the same output: no clock, randomness or hidden
    # state, so a simulation replays exactly
    assert step(before, event, now) == first


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
    if after.state in (State.STOPPED, State.FATAL):
        assert after.deadline is None
    # a RUNNING record's deadline is its nearest timer (max_lifetime, watchdog), if any
    if after.state == State.RUNNING:
        timers = [t for t in (after.lifetime_at, after.watchdog_at) if t is not None]
        assert after.deadline == (min(timers) if timers else None)
    # the RUNNING timers exist only while a process does; the watchdog only once RUNNING
    if after.state not in (State.STARTING, State.RUNNING):
        assert (after.lifetime_at, after.watchdog_at) == (None, None)
    if after.state != State.RUNNING:
        assert after.watchdog_at is None
    # only a STARTING process waits for something
    if after.state != State.STARTING:
        assert after.waiting is None
    # a crash loop ends on RUNNING
    if after.state == State.RUNNING:
        assert after.failures == 0


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
            "companion 'w' (pid 42) did not exit in time after SIGTERM; "
            "sending SIGKILL to its process group"),
        Kill("w", PID, KILL, group=True),
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
    (Tick(), 20.0, State.STOPPING, [Kill("w", PID, KILL, group=True)]),
    (Tick(), 20.5, State.STOPPING, []),
    (Stop(quick=True), 21.0, State.STOPPING, []),
    (Stop(), 21.5, State.STOPPING, []),
    (Exited(BY_KILL), 22.0, State.STOPPED, []),
    (Tick(), 30.0, State.STOPPED, []),
]

QUICK_AFTER_GRACEFUL = [
    (Stop(), 10.0, State.STOPPING, [Kill("w", PID, TERM)]),
    (Stop(quick=True), 12.0, State.STOPPING, [Kill("w", PID, KILL, group=True)]),
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
    (Tick(), 17.0, State.STOPPING, [Kill("w", 1, KILL, group=True)]),  # reload_timeout is 7
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


# -- crash loops: backoff_delay ----------------------------------------------------

# restart_delay 1, max_restart_delay 30: the delay before jitter, per failure count
BACKOFF_SPEC = replace(SPEC, restart_delay=1.0, max_restart_delay=30.0)
BASE_DELAYS = {0: 1.0, 1: 1.0, 2: 2.0, 3: 4.0, 4: 8.0, 5: 16.0, 6: 30.0, 7: 30.0, 8: 30.0,
               9: 30.0, 10: 30.0}
SPREAD = {0.0: 0.9, 0.5: 1.0, 1.0: 1.1}  # jitter -> factor, from the second failure on


@pytest.mark.parametrize("jitter", sorted(SPREAD))
@pytest.mark.parametrize("failures", sorted(BASE_DELAYS))
def test_backoff_delay_table(failures, jitter):
    factor = 1.0 if failures <= 1 else SPREAD[jitter]
    expected = BASE_DELAYS[failures] * factor
    assert backoff_delay(BACKOFF_SPEC, failures, jitter) == pytest.approx(expected)


@pytest.mark.parametrize("jitter", sorted(SPREAD))
def test_backoff_delay_grows_then_stays_capped(jitter):
    delays = [backoff_delay(BACKOFF_SPEC, n, jitter) for n in range(0, 40)]
    assert delays == sorted(delays)
    assert max(delays) == pytest.approx(30.0 * SPREAD[jitter])
    assert all(0.9 <= d / BASE_DELAYS.get(n, 30.0) <= 1.1 + 1e-9 for n, d in enumerate(delays))


@pytest.mark.parametrize(
    "restart_delay, max_restart_delay, failures, jitter, expected",
    [
        # a cap below restart_delay caps at restart_delay instead
        (10.0, 5.0, 1, 0.5, 10.0),
        (10.0, 5.0, 2, 0.5, 10.0),
        (10.0, 5.0, 7, 0.0, 9.0),
        (10.0, 5.0, 7, 1.0, 11.0),
        # the cap applies before the spread
        (0.5, 60.0, 8, 0.5, 60.0),
        (0.5, 60.0, 7, 0.5, 32.0),
        (0.5, 60.0, 8, 1.0, 66.0),
        # no delay stays no delay
        (0.0, 60.0, 1, 0.5, 0.0),
        (0.0, 60.0, 9, 1.0, 0.0),
        (0.0, 0.0, 3, 0.5, 0.0),
        # the cap equal to restart_delay: no growth at all, only the spread
        (3.0, 3.0, 5, 0.0, 2.7),
    ],
)
def test_backoff_delay_edges(restart_delay, max_restart_delay, failures, jitter, expected):
    spec = replace(SPEC, restart_delay=restart_delay, max_restart_delay=max_restart_delay)
    assert backoff_delay(spec, failures, jitter) == pytest.approx(expected)


@pytest.mark.parametrize(
    "failures_before, jitter, delay, text",
    [
        (0, 0.0, 3.0, "3s"),  # the first failure: plain restart_delay, no spread
        (0, 1.0, 3.0, "3s"),
        (1, 0.5, 6.0, "6s"),
        (1, 0.0, 5.4, "5.4s"),
        (2, 1.0, 13.2, "13.2s"),
        (3, 0.5, 20.0, "20s"),  # capped (startretries None so it is no FATAL)
        (10, 0.0, 18.0, "18s"),
    ],
)
def test_exit_while_starting_backs_off_by_failure_count(failures_before, jitter, delay, text):
    record = replace(LOOP_STARTING, spec=replace(LOOP, startretries=None),
                     failures=failures_before)
    after, actions = step(record, Exited(EXIT_1, jitter=jitter), NOW)
    assert (after.state, after.failures) == (State.BACKOFF, failures_before + 1)
    assert after.deadline == pytest.approx(NOW + delay)
    assert actions == [Log(logging.ERROR, "companion 'w' (pid 42) exited unexpectedly with "
                                          f"exit code 1; restarting in {text}")]


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("status", [EXIT_1, EXIT_0, BY_KILL])
def test_exit_while_running_waits_plain_restart_delay(status, jitter):
    record = replace(RUNNING, spec=LOOP, restarts=9)
    after, actions = step(record, Exited(status, jitter=jitter), NOW)
    assert (after.state, after.deadline, after.failures) == (State.BACKOFF, NOW + 3.0, 0)
    assert logs(actions)[0].message.endswith("restarting in 3s")


# -- crash loops: startretries -------------------------------------------------------


def fail_to_start(record, now, jitter=0.5):
    """From BACKOFF or STOPPED: (re)spawn a process that dies before RUNNING.

    Returns the record and every action of the attempt; now moves on past the
    backoff delay so the next attempt can start at once.
    """
    actions = []
    if record.state == State.STOPPED:
        record, got = step(record, Start(), now)
    else:
        now = record.deadline
        record, got = step(record, Tick(), now)
    actions += got
    assert (record.state, others(got)) == (State.STARTING, [Spawn("w")])
    record, got = step(record, Spawned(1000 + record.restarts), now)
    actions += got
    record, got = step(record, Exited(EXIT_1, jitter=jitter), now + 0.5)
    return record, actions + got, now + 0.5


def giving_up(actions):
    return [a for a in logs(actions) if "giving up (FATAL)" in a.message]


@pytest.mark.parametrize(
    "startretries, attempts",
    [(0, 1), (1, 2), (3, 4), (5, 6)],
)
def test_startretries_fatal_after_exactly_retries_plus_one_failures(startretries, attempts):
    record, now, everything = Record(replace(SPEC, startretries=startretries)), 0.0, []
    for attempt in range(1, attempts + 1):
        record, actions, now = fail_to_start(record, now)
        everything += actions
        expected = State.FATAL if attempt == attempts else State.BACKOFF
        assert (attempt, record.state, record.failures) == (attempt, expected, attempt)
    # exactly one ERROR says so, on the last attempt
    (fatal,) = giving_up(everything)
    assert fatal.level == logging.ERROR
    assert giving_up(actions) == [fatal]
    assert (record.pid, record.deadline, record.restarts) == (None, None, attempts - 1)
    # and FATAL stays FATAL whatever the clock does
    assert step(record, Tick(), now + 10_000.0) == (record, [])


@pytest.mark.parametrize("before", [WAITING_READY, LOCK_WAIT, LOCK_HELD_ELSEWHERE])
@pytest.mark.parametrize("event", [Stop(), Stop(quick=True), Restart(), Recycle("max_lifetime")])
def test_a_stop_or_restart_clears_what_a_starting_companion_waited_for(before, event):
    after, _ = step(before, event, NOW)
    assert (after.state, after.waiting) == (State.STOPPING, None)


def test_fatal_log_line_after_a_single_failed_start():
    # startretries=0: the first failure is the last, said without a count
    _, actions = step(replace(STARTING, spec=replace(SPEC, startretries=0)),
                      Exited(ExitStatus(code=3)), NOW)
    assert actions == [
        Log(logging.ERROR,
            "companion 'w' (pid 42) exited with exit code 3 before it was RUNNING, once in a "
            "row; giving up (FATAL). `gunicorn-companion start w` tries again")
    ]


def test_fatal_log_line():
    _, actions = step(replace(LOOP_STARTING, failures=3), Exited(ExitStatus(code=3)), NOW)
    assert actions == [
        Log(logging.ERROR,
            "companion 'w' (pid 42) exited with exit code 3 before it was RUNNING, 4 times in a "
            "row; giving up (FATAL). `gunicorn-companion start w` tries again")
    ]


def test_startretries_none_never_gives_up():
    record, now, everything = Record(replace(SPEC, startretries=None)), 0.0, []
    for attempt in range(1, 101):
        record, actions, now = fail_to_start(record, now, jitter=attempt % 3 / 2)
        everything += actions
        assert (record.state, record.failures) == (State.BACKOFF, attempt)
    assert giving_up(everything) == []
    # the delay stopped growing at the cap (60s by default, +-10%)
    assert record.deadline - now == pytest.approx(60.0 * SPREAD[100 % 3 / 2])


@pytest.mark.parametrize("event", [Start(), Restart()], ids=["Start", "Restart"])
def test_start_from_fatal_gets_a_full_set_of_retries(event):
    record, now = Record(replace(SPEC, startretries=2)), 0.0
    for _ in range(3):
        record, _, now = fail_to_start(record, now)
    assert (record.state, record.failures) == (State.FATAL, 3)
    record, actions = step(record, event, now)
    assert (record.state, record.failures, others(actions)) == (State.STARTING, 0, [Spawn("w")])
    # the first attempt after FATAL backs off by plain restart_delay, as a first failure
    record, _ = step(record, Spawned(7), now)
    record, _ = step(record, Exited(EXIT_1, jitter=1.0), now + 0.1)
    assert (record.state, record.failures) == (State.BACKOFF, 1)
    assert record.deadline == pytest.approx(now + 0.1 + 3.0)
    # two more failures are tolerated again before the next FATAL
    record, _, now = fail_to_start(record, now + 0.1)
    assert record.state == State.BACKOFF
    record, _, now = fail_to_start(record, now)
    assert (record.state, record.failures) == (State.FATAL, 3)


def test_running_ends_a_crash_loop():
    record, now = Record(replace(SPEC, startretries=3)), 0.0
    for _ in range(3):
        record, _, now = fail_to_start(record, now)
    record, _ = step(record, Tick(), record.deadline)
    record, _ = step(record, Spawned(7), now + 10)
    record, _ = step(record, Tick(), record.deadline)
    assert (record.state, record.failures) == (State.RUNNING, 0)
    # a later crash of the RUNNING process is a first failure again, not the fourth
    record, actions = step(record, Exited(EXIT_1), now + 100)
    assert (record.state, record.failures, record.deadline) == (State.BACKOFF, 0, now + 103.0)
    assert giving_up(actions) == []


@pytest.mark.parametrize("quick", [False, True], ids=["graceful", "quick"])
def test_stop_during_starting_then_exit_is_not_a_failed_start(quick):
    # startretries 3 and three failures behind it: one more failure would be FATAL
    record = replace(LOOP_STARTING, failures=3)
    record, _ = step(record, Stop(quick=quick), NOW)
    assert record.state == State.STOPPING
    record, actions = step(record, Exited(EXIT_1), NOW + 1)
    assert (record.state, record.failures, record.wanted) == (State.STOPPED, 3, False)
    assert giving_up(actions) == [] and [a.level for a in logs(actions)] == [logging.INFO]
    # and a start afterwards begins a fresh count
    record, _ = step(record, Start(), NOW + 2)
    assert (record.state, record.failures) == (State.STARTING, 0)


def test_reconfigure_during_a_failing_start_gives_the_new_spec_a_fresh_count():
    record, _ = step(replace(LOOP_STARTING, failures=3), Reconfigure(NEW), NOW)
    record, _ = step(record, Exited(ExitStatus(signal=TERM)), NOW + 1)
    assert (record.state, record.spec) == (State.STARTING, NEW)
    assert record.failures == 0


# -- max_lifetime ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_lifetime, max_lifetime_jitter, jitter, lifetime_at",
    [
        (100.0, 20.0, 0.0, 200.0),
        (100.0, 20.0, 0.25, 205.0),
        (100.0, 20.0, 0.5, 210.0),
        (100.0, 20.0, 0.999, 219.98),
        (100.0, 0.0, 0.7, 200.0),
        (0.5, 0.0, 0.0, 100.5),
        (None, 20.0, 0.5, None),
    ],
)
def test_spawned_sets_lifetime_at(max_lifetime, max_lifetime_jitter, jitter, lifetime_at):
    spec = replace(SPEC, max_lifetime=max_lifetime, max_lifetime_jitter=max_lifetime_jitter)
    record, _ = step(replace(FORKING, spec=spec), Spawned(PID, jitter=jitter), NOW)
    assert record.lifetime_at == (None if lifetime_at is None else pytest.approx(lifetime_at))
    # STARTING still waits for startsecs; the lifetime waits for RUNNING
    assert (record.state, record.deadline) == (State.STARTING, NOW + 2.0)


@pytest.mark.parametrize(
    "lifetime_at, watchdog_timeout, deadline",
    [
        (None, None, None),
        (150.0, None, 150.0),
        (None, 5.0, 106.0),
        (150.0, 5.0, 106.0),
        (103.0, 5.0, 103.0),
        (106.0, 5.0, 106.0),
        (90.0, 5.0, 90.0),  # already due (max_lifetime < startsecs): the next Tick recycles
    ],
)
def test_running_deadline_is_the_nearest_timer(lifetime_at, watchdog_timeout, deadline):
    spec = replace(SPEC, max_lifetime=60.0 if lifetime_at else None,
                   watchdog_timeout=watchdog_timeout)
    record = replace(STARTING, spec=spec, lifetime_at=lifetime_at)
    after, _ = step(record, Tick(), 101.0)
    assert (after.state, after.deadline, after.lifetime_at) == (State.RUNNING, deadline,
                                                                lifetime_at)


def test_lifetime_recycle_end_to_end():
    record, actions = step(AGED, Tick(), 110.0)
    assert actions == [
        Log(logging.INFO, "companion 'w' (pid 42) is restarted: max_lifetime reached"),
        Kill("w", PID, TERM),
    ]
    assert (record.state, record.wanted, record.last_recycle, record.deadline) == (
        State.STOPPING, True, "max_lifetime reached", 120.0)
    # a slow exit still escalates as any graceful stop does
    record, actions = step(record, Tick(), 120.0)
    assert others(actions) == [Kill("w", PID, KILL, group=True)]
    record, actions = step(record, Exited(BY_KILL), 121.0)
    assert (record.state, others(actions)) == (State.STARTING, [Spawn("w")])
    # a planned restart is not counted with the crashes, and the reason stays for status
    assert (record.restarts, record.failures, record.last_recycle) == (
        0, 0, "max_lifetime reached")
    record, _ = step(record, Spawned(43, jitter=0.5), 121.0)
    assert record.lifetime_at == 121.0 + 100.0 + 10.0


def test_lifetime_recycle_ignores_a_stale_tick():
    record, _ = step(AGED, Recycle("by hand"), 105.0)
    assert step(record, Tick(), 110.0)[1] == []  # the old lifetime deadline is gone


# -- Recycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("record", [RUNNING, STARTING, AGED, TIMED],
                         ids=["RUNNING", "STARTING", "with-lifetime", "with-watchdog"])
def test_recycle_stops_gracefully_and_restarts(record):
    reason = "max_memory exceeded (300.0 MiB unshared > 256.0 MiB)"
    stopping, actions = step(record, Recycle(reason), NOW)
    assert actions == [Log(logging.INFO, f"companion 'w' (pid 42) is restarted: {reason}"),
                       Kill("w", PID, TERM)]
    assert (stopping.state, stopping.deadline, stopping.wanted, stopping.last_recycle,
            stopping.killed) == (State.STOPPING, NOW + 10.0, True, reason, False)
    # a second Recycle while it stops changes nothing
    assert step(stopping, Recycle("again"), NOW + 1) == (stopping, [])
    after, actions = step(stopping, Exited(ExitStatus(signal=TERM)), NOW + 2)
    assert (after.state, others(actions), after.restarts) == (
        State.STARTING, [Spawn("w")], record.restarts)


def test_stop_after_recycle_keeps_it_stopped():
    record, _ = step(RUNNING, Recycle("why"), NOW)
    record, _ = step(record, Stop(), NOW + 1)
    record, actions = step(record, Exited(EXIT_0), NOW + 2)
    assert (record.state, others(actions)) == (State.STOPPED, [])


# -- readiness ---------------------------------------------------------------------------


def test_ready_log_line():
    assert step(STARTING, Notified("ready"), 100.5)[1] == [
        Log(logging.INFO, "companion 'w' (pid 42) is RUNNING (ready)")
    ]


def test_wait_ready_spawned_log_line():
    assert step(replace(FORKING, spec=READY), Spawned(PID), NOW)[1] == [
        Log(logging.INFO, "companion 'w' (pid 42) starting; waiting for ready()")
    ]


READY_ONLY = [
    (Start(), 0.0, State.STARTING, [Spawn("w")]),
    (Spawned(7), 0.0, State.STARTING, []),
    (Tick(), 2.0, State.STARTING, []),  # startsecs means nothing with wait_ready
    (Tick(), 3600.0, State.STARTING, []),
    (Notified("heartbeat"), 3601.0, State.STARTING, []),
    (Notified("lock-held"), 3602.0, State.STARTING, []),
    (Notified("ready"), 3603.0, State.RUNNING, []),
    (Notified("ready"), 3604.0, State.RUNNING, []),
    (Tick(), 3605.0, State.RUNNING, []),
]


def test_with_wait_ready_only_ready_makes_it_running():
    record = replay(Record(READY), READY_ONLY)
    assert (record.deadline, record.waiting, record.pid) == (None, None, 7)


@pytest.mark.parametrize("what", ["ready", "heartbeat", "lock-wait", "lock-held"])
def test_news_after_the_process_is_gone_is_ignored(what):
    # a datagram sent just before the exit is read after it was reaped
    record, _ = step(replace(WATCHED_RUNNING, spec=replace(WATCHED, singleton=True)),
                     Exited(EXIT_1), NOW)
    assert step(record, Notified(what), NOW + 0.1) == (record, [])


# -- watchdog ----------------------------------------------------------------------------


def test_watchdog_kill_log_and_order():
    _, actions = step(WATCHED_RUNNING, Tick(), 106.0)
    assert actions == [
        Log(logging.ERROR, "companion 'w' (pid 42) sent no heartbeat for 5s; killing it"),
        Kill("w", PID, KILL, group=True),
    ]


@pytest.mark.parametrize("beats, watchdog_at", [
    ([], 106.0),
    ([101.0], 106.0),
    ([101.0, 102.0], 107.0),
    ([102.0, 104.0, 108.0], 113.0),
])
def test_heartbeats_push_the_watchdog(beats, watchdog_at):
    record, _ = step(replace(STARTING, spec=WATCHED), Tick(), 101.0)
    for now in beats:
        record, actions = step(record, Notified("heartbeat"), now)
        assert actions == []
    assert (record.watchdog_at, record.deadline) == (watchdog_at, watchdog_at)
    assert step(record, Tick(), watchdog_at - 0.01) == (record, [])
    assert step(record, Tick(), watchdog_at)[0].state == State.STOPPING


def test_watchdog_kill_respawns_after_exit():
    record, _ = step(WATCHED_RUNNING, Tick(), 106.0)
    # a quick kill: nothing left to escalate, whatever the clock does
    assert step(record, Tick(), 1000.0) == (record, [])
    record, actions = step(record, Exited(BY_KILL), 106.5)
    assert (record.state, others(actions), record.wanted, record.restarts, record.watchdog_at,
            record.last_recycle) == (State.STARTING, [Spawn("w")], True, 1, None, "watchdog")
    # the new process is not watched until it is RUNNING
    record, _ = step(record, Spawned(43), 106.5)
    assert (record.watchdog_at, record.deadline) == (None, 108.5)
    record, _ = step(record, Tick(), 108.5)
    assert (record.state, record.watchdog_at, record.deadline) == (State.RUNNING, 113.5, 113.5)


def test_stop_after_watchdog_kill_keeps_it_stopped():
    record, _ = step(WATCHED_RUNNING, Tick(), 106.0)
    record, actions = step(record, Stop(), 106.1)
    assert (record.wanted, others(actions)) == (False, [])  # SIGKILL already sent
    record, actions = step(record, Exited(BY_KILL), 106.2)
    assert (record.state, others(actions)) == (State.STOPPED, [])


# -- singletons --------------------------------------------------------------------------


def test_lock_wait_log_line():
    assert step(LOCK_WAIT, Notified("lock-wait"), NOW)[1] == [
        Log(logging.INFO, "companion 'w' (pid 42) waits for its singleton lock "
                          "(another instance holds it)")
    ]


@pytest.mark.parametrize(
    "startsecs, wait_ready, state, deadline, waiting, message",
    [
        (2.0, False, State.STARTING, 1002.0, None, "starting"),
        (0.0, False, State.RUNNING, None, None, "started"),
        (2.0, True, State.STARTING, None, "ready()", "starting; waiting for ready()"),
        (0.0, True, State.STARTING, None, "ready()", "starting; waiting for ready()"),
    ],
)
def test_singleton_settles_only_once_the_lock_is_held(startsecs, wait_ready, state, deadline,
                                                      waiting, message):
    spec = replace(SINGLE, startsecs=startsecs, wait_ready=wait_ready)
    record = replay(Record(spec), [
        (Start(), 0.0, State.STARTING, [Spawn("w")]),
        (Spawned(PID), 0.0, State.STARTING, []),
        (Tick(), 500.0, State.STARTING, []),
        (Notified("lock-wait"), 1.0, State.STARTING, []),
        (Notified("ready"), 2.0, State.STARTING, []),  # before the lock: ignored
        (Notified("heartbeat"), 3.0, State.STARTING, []),
        (Tick(), 999.0, State.STARTING, []),
    ])
    assert (record.deadline, record.waiting) == (None, "singleton lock held by another instance")
    record, actions = step(record, Notified("lock-held"), 1000.0)
    assert (record.state, record.deadline, record.waiting) == (state, deadline, waiting)
    assert actions == [Log(logging.INFO, f"companion 'w' (pid 42) {message}")]
    # a second lock-held changes nothing
    assert step(record, Notified("lock-held"), 1000.5) == (record, [])


def test_singleton_with_wait_ready_needs_lock_then_ready():
    record = replay(Record(replace(SINGLE, wait_ready=True)), [
        (Start(), 0.0, State.STARTING, [Spawn("w")]),
        (Spawned(PID), 0.0, State.STARTING, []),
        (Notified("ready"), 1.0, State.STARTING, []),
        (Notified("lock-held"), 2.0, State.STARTING, []),
        (Tick(), 100.0, State.STARTING, []),
        (Notified("ready"), 101.0, State.RUNNING, []),
    ])
    assert (record.waiting, record.deadline) == (None, None)


def test_singleton_exit_while_waiting_for_the_lock_is_a_failed_start():
    record, actions = step(LOCK_HELD_ELSEWHERE, Exited(EXIT_1), NOW)
    assert (record.state, record.failures, record.waiting) == (State.BACKOFF, 1, None)


# -- a scripted history with every newer feature -------------------------------------------

HISTORY_SPEC = replace(SPEC, restart_delay=1.0, max_restart_delay=60.0, startsecs=2.0,
                       stop_timeout=10.0, max_lifetime=100.0, max_lifetime_jitter=8.0,
                       watchdog_timeout=30.0, startretries=5)

# (event, now, state, non-Log actions, fields to check afterwards)
HISTORY = [
    # boot, and three failed starts with growing delays: 1s, 2s, 4s
    (Start(), 0.0, State.STARTING, [Spawn("w")], {"failures": 0}),
    (Spawned(11, jitter=0.5), 0.0, State.STARTING, [], {"deadline": 2.0, "lifetime_at": 104.0}),
    (Exited(EXIT_1, jitter=0.5), 1.0, State.BACKOFF, [],
     {"failures": 1, "deadline": 2.0, "lifetime_at": None}),
    (Tick(), 2.0, State.STARTING, [Spawn("w")], {"restarts": 1}),
    (Spawned(12, jitter=0.5), 2.0, State.STARTING, [], {"deadline": 4.0}),
    (Exited(EXIT_1, jitter=0.5), 3.0, State.BACKOFF, [], {"failures": 2, "deadline": 5.0}),
    (Tick(), 4.5, State.BACKOFF, [], {}),
    (Tick(), 5.0, State.STARTING, [Spawn("w")], {"restarts": 2}),
    (Spawned(13, jitter=0.5), 5.0, State.STARTING, [], {"deadline": 7.0}),
    (Exited(ExitStatus(signal=int(signal.SIGSEGV)), jitter=0.5), 6.0, State.BACKOFF, [],
     {"failures": 3, "deadline": 10.0}),
    (Tick(), 10.0, State.STARTING, [Spawn("w")], {"restarts": 3, "failures": 3}),
    # this time it stays up: RUNNING ends the crash loop and arms both timers
    (Spawned(14, jitter=0.25), 10.0, State.STARTING, [],
     {"deadline": 12.0, "lifetime_at": 112.0, "watchdog_at": None}),
    (Tick(), 12.0, State.RUNNING, [],
     {"failures": 0, "watchdog_at": 42.0, "deadline": 42.0}),
    (Notified("heartbeat"), 40.0, State.RUNNING, [], {"watchdog_at": 70.0, "deadline": 70.0}),
    (Notified("heartbeat"), 68.0, State.RUNNING, [], {"watchdog_at": 98.0, "deadline": 98.0}),
    (Notified("heartbeat"), 96.0, State.RUNNING, [], {"watchdog_at": 126.0, "deadline": 112.0}),
    (Tick(), 111.0, State.RUNNING, [], {}),
    # max_lifetime: a graceful recycle
    (Tick(), 112.0, State.STOPPING, [Kill("w", 14, TERM)],
     {"wanted": True, "last_recycle": "max_lifetime reached", "deadline": 122.0}),
    (Exited(ExitStatus(signal=TERM)), 113.0, State.STARTING, [Spawn("w")],
     {"restarts": 3, "failures": 0}),
    (Spawned(15, jitter=0.0), 113.0, State.STARTING, [], {"lifetime_at": 213.0}),
    (Tick(), 115.0, State.RUNNING, [], {"watchdog_at": 145.0, "deadline": 145.0}),
    # it hangs: no heartbeat for 30s, killed at once and started again
    (Tick(), 145.0, State.STOPPING, [Kill("w", 15, KILL, group=True)],
     {"last_recycle": "watchdog", "restarts": 4, "killed": True, "deadline": None}),
    (Exited(BY_KILL), 146.0, State.STARTING, [Spawn("w")], {"failures": 0}),
    (Spawned(16), 146.0, State.STARTING, [], {}),
    (Tick(), 148.0, State.RUNNING, [], {"watchdog_at": 178.0}),
    # stopped by hand: it stays stopped whatever the clock does
    (Stop(), 150.0, State.STOPPING, [Kill("w", 16, TERM)], {"wanted": False, "deadline": 160.0}),
    (Exited(ExitStatus(signal=TERM)), 151.0, State.STOPPED, [],
     {"pid": None, "deadline": None, "lifetime_at": None, "watchdog_at": None}),
    (Tick(), 1000.0, State.STOPPED, [], {}),
]


def test_history_crash_loop_lifetime_watchdog_stop():
    record = Record(HISTORY_SPEC)
    errors = 0
    for index, (event, now, state, actions, fields) in enumerate(HISTORY):
        record, got = step(record, event, now)
        assert (index, record.state, others(got)) == (index, state, actions), event
        assert (index, {f: getattr(record, f) for f in fields}) == (index, fields), event
        errors += sum(1 for log in logs(got) if log.level == logging.ERROR)
    # three crashes and one watchdog kill; the recycle and the stop are no errors
    assert errors == 4
    assert (record.restarts, record.failures, record.last_recycle, record.wanted) == (
        4, 0, "watchdog", False)


def test_down_since_marks_the_start_of_a_crash_loop_until_running_again():
    # RUNNING at 100, exits at 150: down since 150, through each failed retry
    record = Record(replace(SPEC, startretries=2), state=State.RUNNING, pid=PID, wanted=True,
                    started_at=NOW)
    record, _ = step(record, Exited(EXIT_1), 150.0)
    assert (record.state, record.down_since) == (State.BACKOFF, 150.0)
    for now in (160.0, 170.0):
        record, _ = step(record, Tick(), record.deadline)
        record, _ = step(record, Spawned(PID + 1), record.deadline or now)
        record, _ = step(record, Exited(EXIT_1), now)
        assert record.down_since == 150.0
    record, _ = step(record, Tick(), record.deadline)
    record, _ = step(record, Spawned(PID + 2), 180.0)
    record, _ = step(record, Exited(EXIT_1), 181.0)
    assert (record.state, record.down_since) == (State.FATAL, 150.0)
    # a start by hand that reaches RUNNING ends it
    record, _ = step(record, Start(), 200.0)
    record, _ = step(record, Spawned(PID + 3), 200.0)
    record, _ = step(record, Tick(), 202.0)
    assert (record.state, record.down_since) == (State.RUNNING, None)


def test_a_stop_in_backoff_clears_down_since():
    record = Record(SPEC, state=State.BACKOFF, wanted=True, deadline=110.0, down_since=90.0)
    record, _ = step(record, Stop(), NOW)
    assert (record.state, record.down_since) == (State.STOPPED, None)
