"""Fast tests of the supervisor (supervisor.py) and the loop's signal
meanings (loop.handle_signal) on the seam: the real Supervisor over the
simulation's SimHost, a virtual process table and clock, with scripted
processes (``World.scripted``: they do nothing on their own and exit a set
time after a stop signal). No kernel, no sleeps: time is virtual.

The random simulation (tests/simulation.py) checks invariants; these pin
exact outcomes it does not look at: what ``status`` shows, what a reread
changes, which process a signal reaches, when memory recycles.
"""

from __future__ import annotations

import errno
import faulthandler
import hashlib
import heapq
import json
import logging
import os
import selectors
import signal
import socket
import struct

import pytest
from simulation import MiB, SimHost, SimLog, SimManager, World

from gunicorn_companion import commands, loop, privileges, protocol
from gunicorn_companion.loading import CompanionConfig
from gunicorn_companion.server import ControlServer
from gunicorn_companion.spec import CompanionSpec, ConfigError
from gunicorn_companion.supervisor import LEFTOVER_GRACE, Supervisor, diff_specs


def spec(name: str, **options) -> CompanionSpec:
    return CompanionSpec(**{"name": name, "target": "sim:target", **options})


class Rig:
    """A supervisor over a simulated host, and the loop's part: reap on
    SIGCHLD, fire what is due, advance the virtual clock."""

    def __init__(self, *specs: CompanionSpec, stop_delay: float | None = 0.01, **options):
        self.world = World(0)
        self.world.scripted = stop_delay
        self.world.manager = SimManager(1, self.world.generation)
        self.host = SimHost(self.world)
        self.log = SimLog(self.world)
        self.config = CompanionConfig(specs)
        self.resolved: list[tuple[str, ...]] = []
        options = {"lock_dir": "/sim/locks", **options}
        self.sup = Supervisor(
            self.config, {s.name: None for s in specs}, host=self.host, log=self.log,
            load_config=lambda: self.config, resolve=self.resolve, master_pid=1,
            lock_scope="test", memory_check_interval=1.0, **options)
        self.world.supervisor = self.sup

    def resolve(self, specs):
        self.resolved.append(tuple(s.name for s in specs))
        return {s.name: f"target of {s.name}" for s in specs}

    def settle(self) -> None:
        if self.world.sigchld:
            self.world.sigchld = False
            loop.handle_signal(self.sup, signal.SIGCHLD)
        self.sup.fire_due()

    def run(self, until: float) -> None:
        """Everything that happens up to virtual time ``until``."""
        world = self.world
        self.settle()
        while True:
            times = [t for t in (world.happenings[0][0] if world.happenings else None,
                                 self.sup.next_deadline()) if t is not None]
            if not times or min(times) > until:
                world.now = max(world.now, until)
                self.settle()
                return
            world.now = max(world.now, min(times))
            while world.happenings and world.happenings[0][0] <= world.now:
                heapq.heappop(world.happenings)[2]()
            self.settle()

    def proc(self, name: str):
        return self.world.procs[self.sup.records[name].pid]

    def entry(self, name: str) -> dict:
        return next(e for e in self.sup.snapshot() if e["name"] == name)

    def logged(self) -> str:
        return "\n".join(self.log.lines)

    def messages(self) -> list[str]:
        """The log's messages whole, without their timestamps."""
        return [line.lstrip().split(" ", 1)[1] for line in self.log.lines]


BASE = {"last_exit": None, "reload_timeout": 10.0, "restarts": 0, "stderr": "inherit",
        "stdout": "inherit", "stop_timeout": 10.0}


# -- snapshot: every field, and when the optional ones appear ---------------------------


def test_snapshot_of_a_companion_never_started_shows_the_fixed_fields_and_wanted():
    rig = Rig(spec("a", autostart=False, stdout="/var/log/a.log", stop_timeout=3.0,
                   reload_timeout=1.5))
    rig.sup.start()
    assert rig.sup.snapshot() == [{
        **BASE, "name": "a", "state": "STOPPED", "pid": None, "uptime": None,
        "target": "sim:target", "wanted": False, "stdout": "/var/log/a.log",
        "stop_timeout": 3.0, "reload_timeout": 1.5}]


def test_snapshot_flags_appear_only_when_set_and_a_command_replaces_the_target():
    rig = Rig(spec("a", autostart=False, target=None, command=("rq", "worker"), group="pool",
                   singleton=True, stop_as_group=True))
    assert rig.sup.snapshot() == [{
        **BASE, "name": "a", "state": "STOPPED", "pid": None, "uptime": None,
        "command": ["rq", "worker"], "group": "pool", "wanted": False, "singleton": True,
        "stop_as_group": True}]


def test_snapshot_of_a_running_companion_has_its_uptime_rounded_to_milliseconds():
    rig = Rig(spec("a", startsecs=0.5))
    rig.run(2.0)
    rig.sup.start()  # at t=2: the uptime counts from its start, not from zero
    rig.run(3.23456)
    assert rig.sup.snapshot() == [{**BASE, "name": "a", "state": "RUNNING",
                                   "pid": rig.proc("a").pid, "uptime": 1.235,
                                   "target": "sim:target"}]


def test_status_scans_the_process_groups_only_of_stopping_companions():
    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0), stop_delay=None)
    rig.sup.start()
    rig.run(0.5)
    scanned = []
    rig.host.process_groups = lambda pgids, real=rig.host.process_groups: (
        scanned.append(sorted(pgids)) or real(pgids))
    rig.sup.snapshot()
    assert scanned == []  # nothing stopping: /proc is not read at all
    rig.sup.request("b", "stop")
    rig.sup.snapshot()
    assert scanned == [[rig.proc("b").pid]]


def test_snapshot_of_a_companion_waiting_for_ready_says_so():
    rig = Rig(spec("a", wait_ready=True))
    rig.sup.start()
    rig.run(2.0)
    entry = rig.entry("a")
    assert (entry["state"], entry["waiting"], entry["uptime"]) == ("STARTING", "ready()", 2.0)


def test_snapshot_of_a_hung_stop_explains_itself_with_its_group():
    rig = Rig(spec("a", startsecs=0.0, stop_signal=signal.SIGINT, stop_timeout=30.0),
              spec("b", startsecs=0.0), stop_delay=None)  # they ignore the stop signal
    rig.sup.start()
    rig.run(0.1)
    rig.world._fork_member(rig.proc("a"), rig.world.behaviour(0))  # a pool child in its group
    rig.sup.request("a", "stop")
    rig.run(2.34567)
    entry = rig.entry("a")
    assert entry["state"] == "STOPPING"
    assert entry["stopping"] == {"seconds": 2.246, "signal": "SIGINT", "timeout": 30.0,
                                 "group_left": 2}
    assert entry["wanted"] is False
    assert "stopping" not in rig.entry("b")


def test_snapshot_of_a_companion_in_backoff_says_how_long_it_has_failed():
    rig = Rig(spec("a", startsecs=5.0, restart_delay=0.5))
    rig.sup.start()
    rig.run(1.0)
    rig.world.die(rig.proc("a"), 3 << 8)  # exits with code 3 before it counts as started
    rig.run(1.23456)
    entry = rig.entry("a")
    assert entry["state"] == "BACKOFF"
    assert entry["last_exit"] == {"code": 3}
    assert entry["pid"] is None and entry["uptime"] is None
    retry_in = round(rig.sup.records["a"].deadline - 1.23456, 3)
    assert retry_in > 0
    assert entry["backoff"] == {"seconds": 0.235, "failures": 1, "retry_in": retry_in}
    rig.run(2.0)  # retried: STARTING again, still failing since t=1 but no longer waiting
    assert rig.entry("a")["state"] == "STARTING"
    assert rig.sup.records["a"].down_since == 1.0
    assert "backoff" not in rig.entry("a")


def test_snapshot_shows_memory_recycles_and_dropped_output_only_when_there_are_any():
    rig = Rig(spec("a", startsecs=0.0, max_memory=100 * MiB), spec("b", startsecs=0.0))
    rig.sup.start()
    rig.run(1.5)
    assert rig.entry("a")["memory"] == 10 * MiB
    for key in ("memory", "last_recycle", "output_dropped", "backoff", "waiting"):
        assert key not in rig.entry("b")
    assert "last_recycle" not in rig.entry("a")
    rig.world.output.dropped["b"] = 4
    assert rig.entry("b")["output_dropped"] == 4
    rig.proc("a").memory = 150 * MiB
    rig.run(2.5)
    assert rig.entry("a")["last_recycle"] == (
        "max_memory exceeded (150.0 MiB unshared > 100.0 MiB)")


# -- the memory check ------------------------------------------------------------------


def test_memory_counts_the_whole_process_group_and_recycles_past_max_memory():
    rig = Rig(spec("a", startsecs=0.0, max_memory=25 * MiB), spec("b", startsecs=0.0))
    rig.sup.start()
    assert rig.sup.next_memory_check == 1.0  # only when something is watched
    rig.run(0.5)
    first = rig.proc("a").pid
    rig.world._fork_member(rig.proc("a"), rig.world.behaviour(0))  # 10 MiB each
    rig.run(1.0)
    assert rig.sup.memory == {"a": 20 * MiB}  # b has no max_memory: not read
    assert rig.sup.next_memory_check == 2.0
    rig.world._fork_member(rig.proc("a"), rig.world.behaviour(0))
    rig.run(2.0)
    assert rig.sup.memory["a"] == 30 * MiB
    assert rig.sup.records["a"].last_recycle.startswith("max_memory exceeded (30.0 MiB")
    rig.run(3.5)
    assert rig.proc("a").pid != first  # restarted
    assert rig.sup.records["a"].state.name == "RUNNING"


def test_memory_at_max_memory_exactly_is_no_leak_and_no_check_runs_unwatched():
    rig = Rig(spec("a", startsecs=0.0, max_memory=10 * MiB))
    rig.sup.start()
    rig.run(3.0)
    assert rig.sup.records["a"].last_recycle is None
    assert Rig(spec("b")).sup.next_deadline() is None
    idle = Rig(spec("b"))
    idle.sup.start()
    assert idle.sup.next_memory_check is None


def test_memory_is_read_only_for_running_companions():
    rig = Rig(spec("a", startsecs=5.0, max_memory=1 * MiB))
    rig.sup.start()
    rig.run(3.0)  # STARTING for 5 s: its import may well be large
    assert rig.sup.memory == {}
    assert rig.sup.records["a"].restarts == 0


# -- signalling: the group or the main process -----------------------------------------


def test_a_stop_as_group_reaches_the_whole_group_else_only_the_main_process():
    rig = Rig(spec("g", startsecs=0.0, stop_as_group=True), spec("m", startsecs=0.0),
              stop_delay=0.5)
    rig.sup.start()
    rig.run(0.1)
    for name in ("g", "m"):
        rig.world._fork_member(rig.proc(name), rig.world.behaviour(0))
    members = {p.name: p for p in rig.world.procs.values() if not p.main}
    for member in members.values():
        member.stop_delay = 0.2
    rig.sup.request("g", "stop")
    rig.sup.request("m", "stop")
    rig.run(0.35)
    assert not members["g"].alive  # the group's stop signal reached it
    assert members["m"].alive  # the main process's only: a pool stops its own children
    rig.run(1.0)
    assert {r.state.name for r in rig.sup.records.values()} == {"STOPPED"}


def test_a_group_signal_before_the_group_exists_reaches_the_main_process():
    rig = Rig(spec("g", startsecs=0.0, stop_as_group=True))
    rig.sup.start()
    proc = rig.proc("g")
    proc.pgid = -1  # not the leader of its group yet (between fork and setpgid)
    rig.sup.request("g", "stop")
    rig.run(0.1)
    assert not proc.alive
    assert rig.sup.records["g"].state.name == "STOPPED"


def test_a_companion_the_manager_may_not_signal_is_logged_not_fatal():
    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0))
    rig.sup.start()
    refused = rig.proc("a").pid

    def signal_process(pid, sig, real=rig.host.signal_process):
        if pid == refused:
            raise PermissionError(1, "Operation not permitted")
        return real(pid, sig)

    rig.host.signal_process = signal_process
    rig.sup.request("a", "stop")
    rig.sup.request("b", "stop")
    assert f"Cannot signal companion 'a' (pid {refused}): [Errno 1] Operation not permitted" \
        in rig.messages()
    rig.run(1.0)
    assert rig.sup.records["b"].state.name == "STOPPED"


# -- diff_specs (pure) --------------------------------------------------------------------

A, B, C = spec("a"), spec("b"), spec("c")
A2 = spec("a", stop_timeout=3.0)


@pytest.mark.parametrize("current, fresh, expected", [
    ({}, {}, ([], [], [], [])),
    ({}, {"a": A, "b": B}, (["a", "b"], [], [], [])),
    ({"a": A, "b": B}, {}, ([], ["a", "b"], [], [])),
    ({"a": A}, {"a": A}, ([], [], [], ["a"])),
    ({"a": A}, {"a": A2}, ([], [], ["a"], [])),
    ({"a": A, "b": B}, {"c": C, "a": A2, "b": B}, (["c"], [], ["a"], ["b"])),
    ({"b": B, "a": A, "c": C}, {"a": A}, ([], ["b", "c"], [], ["a"])),
])
def test_diff_specs(current, fresh, expected):
    assert diff_specs(current, fresh) == dict(zip(("added", "removed", "changed", "unchanged"),
                                                  expected, strict=True))


# -- reread: all or nothing ----------------------------------------------------------------


def test_reread_adds_removes_and_changes_and_keeps_the_configured_order():
    rig = Rig(spec("b", startsecs=0.0), spec("c", startsecs=0.0), spec("d", startsecs=0.0))
    rig.sup.start()
    rig.run(0.5)
    unchanged = rig.proc("d").pid
    rig.config = CompanionConfig((spec("a", startsecs=0.0), spec("b", startsecs=0.0),
                                  spec("d", startsecs=0.0),
                                  spec("c", startsecs=0.0, stop_timeout=3.0),
                                  spec("e", autostart=False)))
    ok, summary, changes = rig.sup.reread()
    assert ok
    assert summary == "added: a, e, changed: c"
    assert changes == {"added": ["a", "e"], "removed": [], "changed": ["c"],
                       "unchanged": ["b", "d"]}
    assert rig.resolved == [("a", "c", "e")]  # only what is new is imported
    assert rig.sup.targets["a"] == "target of a"
    assert list(rig.sup.records) == ["a", "b", "d", "c", "e"]
    rig.run(1.0)
    assert rig.sup.records["d"].pid == unchanged
    assert rig.sup.records["c"].spec.stop_timeout == 3.0
    assert [rig.sup.records[n].state.name for n in "abdce"] == [
        "RUNNING", "RUNNING", "RUNNING", "RUNNING", "STOPPED"]
    assert "Companion config reread: added: a, e, changed: c" in rig.messages()


def test_reread_with_no_changes_says_so():
    rig = Rig(spec("a"))
    assert rig.sup.reread() == (True, "no changes", {
        "added": [], "removed": [], "changed": [], "unchanged": ["a"]})
    assert "Companion config reread: no changes" in rig.messages()


def test_reread_retires_a_removed_companion_once_it_has_stopped():
    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0), stop_delay=0.5)
    rig.sup.start()
    rig.run(0.1)
    rig.config = CompanionConfig((spec("b", startsecs=0.0),))
    ok, summary, _ = rig.sup.reread()
    assert (ok, summary) == (True, "removed: a")
    assert list(rig.sup.records) == ["b", "a"]  # still stopping: shown after the configured
    assert rig.sup.retiring == {"a"}
    rig.run(1.0)
    assert list(rig.sup.records) == ["b"]
    assert rig.sup.retiring == set() and "a" not in rig.sup.targets


def test_reread_readds_a_companion_that_is_still_stopping_on_its_record():
    rig = Rig(spec("a", startsecs=0.0), stop_delay=0.5)
    rig.sup.start()
    rig.run(0.1)
    rig.config = CompanionConfig(())
    rig.sup.reread()
    rig.config = CompanionConfig((spec("a", startsecs=0.0, stop_timeout=4.0),
                                  spec("b", startsecs=0.0)))
    ok, summary, _ = rig.sup.reread()
    assert (ok, summary) == (True, "added: a, b")
    assert rig.sup.retiring == set()
    rig.run(2.0)
    record = rig.sup.records["a"]
    assert (record.state.name, record.spec.stop_timeout) == ("RUNNING", 4.0)
    assert rig.sup.records["b"].state.name == "RUNNING"  # added after it, all the same


def test_reread_compares_a_restarting_companion_with_the_spec_it_is_about_to_run():
    rig = Rig(spec("a", startsecs=0.0), stop_delay=0.5)
    rig.sup.start()
    rig.run(0.1)
    rig.config = CompanionConfig((spec("a", startsecs=0.0, stop_timeout=4.0),))
    assert rig.sup.reread()[1] == "changed: a"
    assert rig.sup.reread()[1] == "no changes"  # still stopping, already for this spec


@pytest.mark.parametrize("fault", ["load", "resolve", "lock_dir"])
def test_a_reread_that_fails_changes_nothing(fault):
    def prepare_lock_dir():
        raise ConfigError("companion_lock_dir '/x' is not writable")

    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0), lock_dir=None,
              prepare_lock_dir=prepare_lock_dir)
    rig.sup.start()
    rig.run(0.5)
    before = dict(rig.sup.records)
    fresh = CompanionConfig((spec("b", startsecs=0.0, stop_timeout=2.0),
                             spec("c", singleton=True)))
    if fault == "load":
        def load():
            raise ConfigError("line 3: no such key 'stop_timout'")
        rig.sup.load_config = load
    else:
        rig.config = fresh
    if fault == "resolve":
        def resolve(specs):
            raise ConfigError("companion 'c': cannot import 'sim:target'")
        rig.sup.resolve = resolve
    ok, message, changes = rig.sup.reread()
    assert not ok and changes == {}
    assert message == str(ConfigError({"load": "line 3: no such key 'stop_timout'",
                       "resolve": "companion 'c': cannot import 'sim:target'",
                       "lock_dir": "companion_lock_dir '/x' is not writable"}[fault]))
    assert f"Companion config not applied, keeping the running one: {message}" in rig.messages()
    assert rig.sup.records == before
    assert rig.sup.retiring == set() and set(rig.sup.targets) == {"a", "b"}


def test_a_reread_prepares_the_lock_dir_when_a_singleton_appears():
    prepared = []
    rig = Rig(spec("a"), lock_dir=None,
              prepare_lock_dir=lambda: prepared.append(1) or "/run/locks")
    rig.sup.reread()
    assert prepared == [] and rig.sup.lock_dir is None
    rig.config = CompanionConfig((spec("a"), spec("s", singleton=True, autostart=False)))
    rig.sup.reread()
    assert prepared == [1] and rig.sup.lock_dir == "/run/locks"


def test_a_reread_during_shutdown_is_refused():
    rig = Rig(spec("a"))
    rig.sup.shutdown(quick=False)
    rig.config = CompanionConfig((spec("a"), spec("b")))
    assert rig.sup.reread() == (False, "the companion manager is shutting down", {})
    assert list(rig.sup.records) == ["a"]


def test_a_reread_arms_the_memory_check_for_a_new_max_memory():
    rig = Rig(spec("a"))
    rig.sup.start()
    assert rig.sup.next_memory_check is None
    rig.config = CompanionConfig((spec("a"), spec("b", max_memory=MiB, autostart=False)))
    rig.sup.reread()
    assert rig.sup.next_memory_check == 1.0


def test_a_reread_that_sets_max_memory_on_a_running_companion_enforces_it():
    rig = Rig(spec("a", startsecs=0.0))
    rig.sup.start()
    rig.run(1.0)
    rig.config = CompanionConfig((spec("a", startsecs=0.0, max_memory=MiB),))
    assert rig.sup.reread()[1] == "changed: a"
    rig.run(10.0)  # restarted on the new spec, and using 10 MiB
    record = rig.sup.records["a"]
    assert record.spec.max_memory == MiB
    assert rig.sup.memory == {"a": 10 * MiB}
    assert record.last_recycle.startswith("max_memory exceeded (10.0 MiB unshared > 1.0 MiB")


# -- handle_signal: what each signal means -------------------------------------------------


def running_rig(**options) -> Rig:
    rig = Rig(spec("a", startsecs=0.0), stop_delay=None, **options)  # ignores SIGTERM
    rig.sup.start()
    rig.run(0.1)
    rig.world._fork_member(rig.proc("a"), rig.world.behaviour(0))
    rig.world.procs[max(rig.world.procs)].stop_delay = None
    return rig


def test_sigterm_stops_gracefully():
    rig = running_rig()
    loop.handle_signal(rig.sup, signal.SIGTERM)
    assert rig.sup.shutting_down
    assert rig.sup.records["a"].state.name == "STOPPING"
    assert rig.proc("a").alive  # it has its stop_timeout
    assert "Companion manager stopping companions (graceful)" in rig.messages()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_sigint_and_sigquit_stop_at_once_with_what_companions_left(signum):
    rig = running_rig()
    main = rig.proc("a")
    rig.world.die(main, 0)  # exits, leaving its pool child behind (it ignores SIGTERM)
    rig.settle()
    assert rig.sup.leftovers
    loop.handle_signal(rig.sup, signum)
    assert rig.sup.shutting_down and not rig.sup.leftovers
    assert not any(p.alive for p in rig.world.procs.values())
    assert "Companion manager stopping companions (quick)" in rig.messages()


def test_sigusr2_is_the_masters_death_only_when_the_master_is_gone():
    rig = running_rig()
    loop.handle_signal(rig.sup, signal.SIGUSR2)
    assert not rig.sup.shutting_down  # forwarded by a live master: its business
    rig.host.master_gone = lambda: True
    loop.handle_signal(rig.sup, signal.SIGUSR2)
    assert rig.sup.shutting_down
    assert "Gunicorn master (pid 1) died; stopping every companion" in rig.messages()
    assert "(quick)" in rig.logged()


def test_sighup_rereads():
    rig = running_rig()
    rig.config = CompanionConfig((spec("a", startsecs=0.0), spec("b", autostart=False)))
    loop.handle_signal(rig.sup, signal.SIGHUP)
    assert list(rig.sup.records) == ["a", "b"]


def test_sigchld_reaps():
    rig = running_rig()
    rig.world.die(rig.proc("a"), 0)
    loop.handle_signal(rig.sup, signal.SIGCHLD)
    assert rig.sup.pids == {}
    assert rig.sup.strays_pending


@pytest.mark.parametrize("broken", [False, True])
def test_sigusr1_reopens_the_managers_log_and_the_companions_files(broken):
    rig = running_rig()
    reopened = []

    def reopen_files():
        reopened.append("log")
        if broken:
            raise PermissionError(13, "Permission denied")

    rig.log.reopen_files = reopen_files
    rig.world.output.failing = 28  # ENOSPC until reopened
    loop.handle_signal(rig.sup, signal.SIGUSR1)
    assert reopened == ["log"] and rig.world.output.failing is None
    assert "Companion log files reopened" in rig.messages()
    assert ("Cannot reopen the companion manager's log: [Errno 13] Permission denied"
            in rig.messages()) is broken


@pytest.mark.parametrize("signum", [signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH])
def test_the_masters_other_signals_change_nothing(signum):
    rig = running_rig()
    before, logged = dict(rig.sup.records), rig.messages()
    loop.handle_signal(rig.sup, signum)
    assert rig.sup.records == before and not rig.sup.shutting_down
    assert rig.messages() == logged  # not even a log line


# -- the loop's own I/O: the wakeup and notify sockets (real sockets, no signals) ----------


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def loop_over(rig: Rig) -> loop.ManagerLoop:
    rig.host.child_closers = []
    manager_loop = loop.ManagerLoop(rig.sup, selectors.DefaultSelector())
    assert rig.host.notify_fd == manager_loop.notify_w.fileno()
    assert rig.host.handled_signals == loop.HANDLED_SIGNALS
    assert rig.host.child_closers == [manager_loop.close_in_child]
    return manager_loop


def test_each_signal_read_from_the_wakeup_socket_is_handled_once():
    rig = Rig(spec("a", startsecs=0.0))
    manager_loop = loop_over(rig)
    handled = Recorder()
    manager_loop.news = Recorder()
    rig.sup.reap = handled.reap
    rig.sup.reread = handled.reread
    # what CPython's C-level handler writes: one byte per signal caught
    manager_loop._wakeup_w.send(bytes([signal.SIGCHLD, signal.SIGCHLD, signal.SIGHUP,
                                       signal.SIGCHLD]))
    manager_loop._on_wakeup(None, None)
    assert handled.calls == [("reap",), ("reread",)]
    assert manager_loop.news.calls == [("expect_settle",)]  # systemd waits for READY=1
    manager_loop._wakeup_r.setblocking(False)
    manager_loop._on_wakeup(None, None)  # woken with nothing to read: nothing happens
    assert handled.calls == [("reap",), ("reread",)]
    manager_loop.close_in_child()


def test_a_notify_datagram_names_its_sender_by_the_kernels_word_when_it_can():
    rig = Rig(spec("a"))
    manager_loop = loop_over(rig)
    heard = Recorder()
    rig.sup.notified = heard.notified
    manager_loop._notify_r.setblocking(False)
    sender = socket.socket(fileno=os.dup(manager_loop.notify_w.fileno()))
    sender.send(b"ready 4242")
    sender.send(b"heartbeat not-a-pid")  # no credentials and no pid: dropped
    manager_loop._on_notify(None, None)
    assert heard.calls == [("notified", 4242, "ready")]
    manager_loop._notify_r.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sender.send(b"ready 4242")  # another companion's pid: the kernel says who sent it
    manager_loop._on_notify(None, None)
    assert heard.calls[1:] == [("notified", os.getpid(), "ready")]
    sender.send(b"\xff\xfeready 4242")  # garbage: no crash, and no word of ours
    manager_loop._on_notify(None, None)
    assert heard.calls[2:] == [("notified", os.getpid(), "\ufffd\ufffdready")]
    sender.close()
    manager_loop.close_in_child()



class SimSelector:
    """The loop's selector over the simulated world: where the real one
    would sleep, virtual time runs on to the next happening (or the
    timeout), and a SIGCHLD the world raised arrives as the byte CPython's
    C handler writes on the wakeup socket. The sockets are real."""

    def __init__(self, rig: Rig):
        self.rig = rig
        self.real = selectors.DefaultSelector()
        self.timeouts: list[float | None] = []
        self.manager_loop: loop.ManagerLoop | None = None

    def __getattr__(self, name):  # register, modify, unregister, close: the real one's
        return getattr(self.real, name)

    def select(self, timeout):
        self.timeouts.append(timeout)
        world = self.rig.world
        if not (ready := self.real.select(0)):
            until = None if timeout is None else world.now + timeout
            if world.happenings and (until is None or world.happenings[0][0] <= until):
                world.now = max(world.now, world.happenings[0][0])
                while world.happenings and world.happenings[0][0] <= world.now:
                    heapq.heappop(world.happenings)[2]()
            else:
                assert until is not None, "the loop would block forever"
                world.now = until
            if world.sigchld:
                world.sigchld = False
                self.manager_loop._wakeup_w.send(bytes([signal.SIGCHLD]))
            ready = self.real.select(0)
        return ready


class SimNews:
    """systemd's news (sdnotify.ManagerNews): a keepalive due at a set time."""

    def __init__(self, rig: Rig, keepalive_at: float | None):
        self.rig = rig
        self.next_keepalive = keepalive_at
        self.turns: list[tuple[float, list]] = []

    def after_loop_turn(self, states):
        self.turns.append((self.rig.world.now, states))
        if self.next_keepalive is not None and self.rig.world.now >= self.next_keepalive:
            self.next_keepalive = None  # sent


def test_the_loop_runs_companions_until_sigterm_has_stopped_them_all_then_cleans_up():
    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0, autostart=False),
              stop_delay=0.25)
    selector = SimSelector(rig)
    rig.host.child_closers = []
    manager_loop = selector.manager_loop = loop.ManagerLoop(rig.sup, selector)
    # what install_signals does, without touching this process's signal handlers
    manager_loop._wakeup_r.setblocking(False)
    selector.register(manager_loop._wakeup_r, selectors.EVENT_READ, manager_loop._on_wakeup)
    control, cleaned = Recorder(), []
    manager_loop.attach_control(control)
    # a freshly forked companion closes the control server's sockets too
    assert rig.host.child_closers[0] == manager_loop.close_in_child
    rig.host.child_closers[1]()
    assert control.calls == [("close_in_child",)]
    manager_loop.news = SimNews(rig, keepalive_at=2.0)
    rig.host.kill_session = lambda: cleaned.append(("kill_session", rig.world.now)) or True
    rig.host.close = lambda: cleaned.append(("close", rig.world.now))
    rig.world.at(5.0, lambda: manager_loop._wakeup_w.send(bytes([signal.SIGTERM])))
    assert manager_loop.run() == 0
    assert rig.world.now == 5.25  # the stop took what the companion took, no more
    assert [e["state"] for e in rig.sup.snapshot()] == ["STOPPED", "STOPPED"]
    assert len(starts(rig, "a")) == 1 and starts(rig, "b") == []
    # woken by the keepalive, then nothing to wait for until the signal
    # came, then the stop's own deadline (stop_timeout) bounds the wait
    assert selector.timeouts[:3] == [2.0, None, 10.0]
    turns = manager_loop.news.turns
    assert turns[0] == (2.0, [("a", "RUNNING", True), ("b", "STOPPED", False)])
    assert turns[-1] == (5.25, [("a", "STOPPED", False), ("b", "STOPPED", False)])
    assert control.calls == [("close_in_child",), ("close",)]
    assert cleaned == [("kill_session", 5.25), ("close", 5.25)]
    assert rig.messages()[-1] == f"Companion manager exiting (pid: {os.getpid()})"
    manager_loop.close_in_child()


def test_the_loop_never_waits_past_a_deadline_already_due():
    rig = Rig(spec("a", startsecs=0.0))
    selector = SimSelector(rig)
    rig.host.child_closers = []
    manager_loop = selector.manager_loop = loop.ManagerLoop(rig.sup, selector)
    manager_loop._wakeup_r.setblocking(False)
    selector.register(manager_loop._wakeup_r, selectors.EVENT_READ, manager_loop._on_wakeup)
    manager_loop.news = SimNews(rig, keepalive_at=-1.0)  # overdue: select must not block
    rig.world.at(1.0, lambda: manager_loop._wakeup_w.send(bytes([signal.SIGTERM])))
    manager_loop.run()
    assert selector.timeouts[:2] == [0.0, None]
    manager_loop.close_in_child()


def test_the_loop_serves_the_control_socket_and_a_stop_answers_once_stopped(sock_path):
    rig = Rig(spec("a", startsecs=0.0), stop_delay=0.25)
    selector = SimSelector(rig)
    rig.host.child_closers = []
    manager_loop = selector.manager_loop = loop.ManagerLoop(rig.sup, selector)
    manager_loop._wakeup_r.setblocking(False)
    selector.register(manager_loop._wakeup_r, selectors.EVENT_READ, manager_loop._on_wakeup)
    server = ControlServer(str(sock_path), 0o600, selector=selector, log=rig.log,
                           handle=lambda request, respond: commands.dispatch(
                               rig.sup, request, respond))
    server.bind()
    manager_loop.attach_control(server)
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(sock_path))
    client.sendall(b'{"cmd": "stop", "name": "a"}\n')
    rig.world.at(5.0, lambda: manager_loop._wakeup_w.send(bytes([signal.SIGTERM])))
    manager_loop.run()
    client.settimeout(10.0)
    reply = json.loads(client.makefile("rb").readline())
    assert reply["ok"] is True and "a stopped" in reply["message"]
    assert rig.sup.records["a"].state.name == "STOPPED"
    client.close()
    manager_loop.close_in_child()


@pytest.fixture
def restored_signals():
    """install_signals changes this process's handlers: put them back after."""
    saved = {sig: signal.getsignal(sig) for sig in signal.valid_signals()}
    yield
    signal.set_wakeup_fd(-1)
    for sig, handler in saved.items():
        if handler is not None and handler != signal.getsignal(sig):
            signal.signal(sig, handler)


def test_installed_signals_reach_the_supervisor_through_the_wakeup_socket(restored_signals):
    rig = Rig(spec("a", startsecs=0.0))
    manager_loop = loop_over(rig)
    handled = Recorder()
    rig.sup.reread = handled.reread
    strays = loop.stray_signals()
    manager_loop.install_signals()
    assert all(signal.getsignal(sig) is loop._record_only for sig in loop.HANDLED_SIGNALS)
    # what would end the manager for nothing is ignored, and a companion
    # is told to undo that (an ignored signal stays ignored across exec)
    assert manager_loop.ignored_signals == strays and signal.SIGALRM in strays
    assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in strays)
    assert rig.host.handled_signals == loop.HANDLED_SIGNALS + strays
    assert {key.fileobj: key.data for key in manager_loop.selector.get_map().values()} == {
        manager_loop._wakeup_r: manager_loop._on_wakeup,
        manager_loop._notify_r: manager_loop._on_notify}
    # the loop must never block on its own sockets, nor a companion on its
    # ready()/heartbeat() datagram
    assert not any(sock.getblocking() for sock in (
        manager_loop._wakeup_r, manager_loop._wakeup_w, manager_loop._notify_r,
        manager_loop.notify_w))
    assert manager_loop._notify_r.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
    os.kill(os.getpid(), signal.SIGHUP)  # a real signal: its byte wakes the selector
    for key, mask in manager_loop.selector.select(timeout=10.0):
        key.data(key, mask)
    assert handled.calls == [("reread",)]
    manager_loop.close_in_child()


UCRED = struct.Struct("iII")


@pytest.mark.parametrize("ancillary, pid", [
    ([], None),
    ([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, UCRED.pack(77, 1000, 1000))], 77),
    ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, UCRED.pack(77, 1000, 1000))], None),
    ([(socket.IPPROTO_IP, socket.SCM_CREDENTIALS, UCRED.pack(77, 1000, 1000))], None),
    ([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, UCRED.pack(77, 0, 0)[:11])], None),
    ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"\0" * 12),
      (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, UCRED.pack(78, 0, 0) + b"\0\0\0\0")], 78),
])
def test_sender_pid_from_credentials(ancillary, pid):
    assert loop._sender_pid(ancillary) == pid


def test_stray_signals_are_the_defaults_that_would_end_the_manager():
    strays = loop.stray_signals()
    assert strays == tuple(sorted(strays))
    for sig in (signal.SIGALRM, signal.SIGPROF, signal.SIGTSTP, signal.SIGRTMIN):
        assert sig in strays or signal.getsignal(sig) != signal.SIG_DFL
    for sig in loop.HANDLED_SIGNALS + (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT,
                                       signal.SIGURG):
        assert sig not in strays
    assert signal.SIGINT not in strays  # pytest's own handler stays
    if faulthandler.is_enabled():  # pytest enables it: its traceback must stay
        assert signal.SIGSEGV not in strays and signal.SIGABRT not in strays


# -- fast twins of end-to-end tests: supervision logic, no kernel needed ---------------------


def ask(rig: Rig, cmd: str, name: str | None = None) -> list[dict]:
    """A control request as the server makes it; its answers so far (one, once settled)."""
    answers: list[dict] = []
    commands.dispatch(rig.sup, protocol.Request(cmd, name), answers.append)
    return answers


def starts(rig: Rig, name: str) -> list[int]:
    return [p.pid for p in rig.world.procs.values() if p.name == name and p.main]


def test_failed_starts_back_off_then_go_fatal_and_start_resets_the_count():
    # (was tests/test_supervision.py's end-to-end test of the same name)
    rig = Rig(spec("crash", startsecs=5.0, restart_delay=0.05, startretries=3))

    def spawn_one_that_exits_3(*args, real=rig.host.spawn, **kwargs):
        pid = real(*args, **kwargs)
        rig.world.at(rig.world.now + 0.01, lambda: rig.world.exit(rig.world.procs[pid], code=3))
        return pid

    rig.host.spawn = spawn_one_that_exits_3
    rig.sup.start()
    rig.run(5.0)
    log = rig.logged()
    # the first start and 3 retries, each delay doubled: 0.05, 0.1, 0.2 (+-10%)
    assert log.count("restarting in 0.05s") == 1
    assert log.count("exited unexpectedly") == 3
    assert log.count("giving up (FATAL)") == 1
    assert len(starts(rig, "crash")) == 4
    assert rig.sup.records["crash"].state.name == "FATAL"
    # `start` from FATAL gives it a fresh count: four more runs
    answers = ask(rig, "start", "crash")
    rig.run(10.0)
    assert len(answers) == 1
    assert answers[0]["ok"] is False
    assert "exited with exit code 3 while starting" in answers[0]["error"]
    assert answers[0]["code"] == "exited_while_starting"
    assert rig.logged().count("giving up (FATAL)") == 2
    assert len(starts(rig, "crash")) == 8


def test_a_manual_stop_is_not_a_failure():
    # (was tests/test_supervision.py's end-to-end test of the same name)
    rig = Rig(spec("slow", startsecs=60.0, startretries=0))
    rig.sup.start()
    rig.run(0.5)
    # stopped while STARTING: with startretries 0, a failed start would be FATAL
    answers = ask(rig, "stop", "slow")
    rig.run(1.0)
    assert [a["ok"] for a in answers] == [True]
    assert rig.entry("slow")["state"] == "STOPPED"
    answers = ask(rig, "start", "slow")  # answers only at RUNNING
    rig.run(2.0)
    assert answers == [] and len(starts(rig, "slow")) == 2
    assert rig.entry("slow")["state"] == "STARTING"
    assert "FATAL" not in rig.logged()


def test_autostart_false_waits_for_start():
    # (was tests/test_supervision.py's end-to-end test of the same name)
    rig = Rig(spec("manual", autostart=False, startsecs=0.0), spec("auto", startsecs=0.0))
    rig.sup.start()
    rig.run(1.0)
    assert rig.entry("manual")["state"] == "STOPPED" and starts(rig, "manual") == []
    answers = ask(rig, "start", "manual")
    rig.run(2.0)
    assert [a["ok"] for a in answers] == [True] and len(starts(rig, "manual")) == 1


def test_a_reread_refuses_a_companion_whose_user_does_not_exist():
    base = privileges.Identity(os.geteuid(), os.getegid(), ())
    rig = Rig(spec("a"), base_identity=base)
    rig.config = CompanionConfig((spec("a"), spec("b", user="no-such-user-gc")))
    ok, message, changes = rig.sup.reread()
    assert (ok, changes) == (False, {})
    assert message.startswith("invalid companion configuration: companion 'b': ")
    assert "no-such-user-gc" in message
    assert list(rig.sup.records) == ["a"]


def test_memory_of_a_companion_that_exited_unreaped_is_its_main_process_only():
    rig = Rig(spec("a", startsecs=0.0, max_memory=MiB))
    rig.sup.start()
    rig.run(0.5)
    proc = rig.proc("a")
    rig.world.die(proc, 0)  # gone, its SIGCHLD not handled yet when the check runs
    rig.world.now = 1.0
    rig.sup.fire_due()
    assert rig.sup.memory == {"a": 0}
    assert rig.sup.records["a"].last_recycle is None


# -- the event stream's changes ---------------------------------------------------------


def changes_of(rig: Rig) -> list[tuple]:
    seen: list[tuple] = []
    rig.sup.on_change.append(lambda e: seen.append(
        (e.companion, e.previous, e.state, e.pid, e.exit)))
    return seen


def test_a_start_with_no_settling_time_reports_starting_then_running_with_the_pid():
    rig = Rig(spec("a", startsecs=0))
    seen = changes_of(rig)
    rig.sup.start()
    pid = rig.sup.records["a"].pid
    assert seen == [("a", "STOPPED", "STARTING", pid, None),
                    ("a", "STARTING", "RUNNING", pid, None)]


def test_a_crash_loop_reports_each_exit_and_the_fatal_end():
    rig = Rig(spec("a", startsecs=1.0, restart_delay=0.1, startretries=1))
    seen = changes_of(rig)
    rig.sup.start()
    first = rig.sup.records["a"].pid
    rig.world.exit(rig.proc("a"), 3)
    rig.run(0.2)
    second = rig.sup.records["a"].pid
    rig.world.exit(rig.proc("a"), 3)
    rig.run(0.3)
    assert seen == [
        ("a", "STOPPED", "STARTING", first, None),
        ("a", "STARTING", "BACKOFF", first, {"code": 3, "pid": first}),
        ("a", "BACKOFF", "STARTING", second, None),
        ("a", "STARTING", "FATAL", second, {"code": 3, "pid": second}),
    ]
    assert rig.sup.records["a"].state.value == "FATAL"


def test_a_failed_spawn_reports_starting_without_a_pid_then_backoff():
    rig = Rig(spec("a", singleton=True), lock_dir=None)  # no lock dir: the start fails
    seen = changes_of(rig)
    rig.sup.start()
    assert seen == [("a", "STOPPED", "STARTING", None, None),
                    ("a", "STARTING", "BACKOFF", None, None)]


def test_a_listener_that_fails_is_logged_and_the_step_completes():
    rig = Rig(spec("a", startsecs=0))

    def broken(event):
        raise RuntimeError("listener bug")

    rig.sup.on_change.insert(0, broken)
    seen = changes_of(rig)
    rig.sup.start()
    assert rig.sup.records["a"].state.value == "RUNNING"
    assert [s[2] for s in seen] == ["STARTING", "RUNNING"]  # the others still hear
    assert "Companion change listener" in rig.logged()


def test_companions_and_their_log_files_belong_to_gunicorns_user_unless_they_set_their_own():
    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0, unix_group="root"))
    spawned = {}

    def spawn(spec, target, *, lock_path, identity, real=rig.host.spawn, **more):
        spawned[spec.name] = identity
        return real(spec, target, lock_path=lock_path, identity=identity, **more)

    rig.host.spawn = spawn
    rig.sup.start()
    assert spawned == {"a": None, "b": None}  # no user of its own: it runs as the manager
    assert rig.host.output.owner_of(rig.sup.records["a"].spec) is None
    base = privileges.Identity(os.geteuid() + 1, os.getegid() + 1, ())
    rig.sup.use_identity(base)
    rig.sup.shutdown(quick=True)
    rig.run(1.0)
    rig.sup.shutting_down = False
    rig.sup.request("a", "start")
    rig.sup.request("b", "start")
    assert spawned["a"] == base
    assert (spawned["b"].uid, spawned["b"].gid) == (base.uid, 0)
    # the files it writes its output to are created for whom it runs as
    assert rig.host.output.owner_of(rig.sup.records["a"].spec) == (base.uid, base.gid)
    assert rig.host.output.owner_of(rig.sup.records["b"].spec) == (base.uid, 0)


def test_tail_follow_asks_the_host_for_the_companions_new_lines():
    rig = Rig(spec("a"))
    followed = []
    rig.host.follow = lambda names, responder: followed.append((names, responder))
    responder = Recorder()
    rig.sup.follow(["a"], responder)
    assert followed == [(["a"], responder)]


# -- spawning: failures, singleton locks ---------------------------------------------------


@pytest.mark.parametrize(("error", "says"), [
    (OSError(errno.EAGAIN, "Resource temporarily unavailable"),
     "Resource temporarily unavailable"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/opt/bin/worker"),
     "No such file or directory: '/opt/bin/worker'"),
    (OSError("the stdout file cannot be opened"), "the stdout file cannot be opened"),
])
def test_a_failed_spawn_says_why_and_backs_off(error, says):
    rig = Rig(spec("a", restart_delay=2.0))
    real = rig.host.spawn
    rig.host.spawn = lambda *args, **kwargs: (_ for _ in ()).throw(error)
    rig.sup.start()
    assert rig.messages()[-1] == f"companion 'a' could not be started: {says}; retrying in 2s"
    assert rig.entry("a")["state"] == "BACKOFF" and rig.sup.pids == {}
    rig.host.spawn = real
    rig.run(2.0)
    assert rig.entry("a")["state"] == "STARTING"
    assert rig.sup.pids == {rig.proc("a").pid: "a"}


def lock_paths(rig: Rig) -> dict[str, str | None]:
    paths = {}

    def spawn(spec, target, *, lock_path, identity, real=rig.host.spawn, **more):
        paths[spec.name] = lock_path
        return real(spec, target, lock_path=lock_path, identity=identity, **more)

    rig.host.spawn = spawn
    return paths


def test_a_singleton_locks_a_file_of_its_own_per_config_in_the_lock_dir():
    rig = Rig(spec("s", singleton=True), spec("t", singleton=True), spec("plain"))
    paths = lock_paths(rig)
    rig.sup.start()
    scope = hashlib.sha256(b"test").hexdigest()[:12]  # the lock scope: the config's
    assert paths == {"s": f"/sim/locks/{scope}-s.lock", "t": f"/sim/locks/{scope}-t.lock",
                     "plain": None}


def test_the_lock_dir_is_prepared_once_when_a_singleton_first_starts():
    prepared = []
    rig = Rig(spec("plain"), spec("s", singleton=True, autostart=False),
              spec("t", singleton=True, autostart=False), lock_dir=None,
              prepare_lock_dir=lambda: prepared.append(1) or "/run/gc-locks")
    paths = lock_paths(rig)
    rig.sup.start()
    assert prepared == []  # no singleton running: nothing created
    rig.sup.request("s", "start")
    rig.sup.request("t", "start")
    assert prepared == [1]
    assert paths["t"].startswith("/run/gc-locks/") and paths["t"].endswith("-t.lock")


@pytest.mark.parametrize(("prepare", "says"), [
    (None, "no companion_lock_dir for singleton 's'"),
    (ConfigError("companion_lock_dir '/x' is not a directory"),
     "invalid companion configuration: companion_lock_dir '/x' is not a directory"),
])
def test_a_singleton_never_runs_without_its_lock(prepare, says):
    def failing():
        raise prepare

    rig = Rig(spec("s", singleton=True), lock_dir=None,
              prepare_lock_dir=None if prepare is None else failing)
    rig.sup.start()
    assert rig.world.procs == {}
    assert f"companion 's' could not be started: {says}; retrying in 1s" in rig.messages()


# -- the notify channel --------------------------------------------------------------------


def test_ready_and_heartbeats_count_only_from_a_companions_own_process():
    rig = Rig(spec("r", wait_ready=True), spec("w", startsecs=0.0, watchdog_timeout=1.0))
    rig.sup.start()
    ready, watched = rig.proc("r").pid, rig.proc("w").pid
    rig.sup.notified(watched, "ready")  # another companion's word
    rig.sup.notified(ready, "READY=1")  # not one of ours
    rig.sup.notified(4242, "ready")  # no companion's pid
    assert rig.entry("r")["state"] == "STARTING"
    rig.sup.notified(ready, "ready")
    assert rig.entry("r")["state"] == "RUNNING"
    for t in (0.6, 1.2, 1.8, 2.4):  # heartbeats keep the watchdog quiet
        rig.run(t)
        rig.sup.notified(watched, "heartbeat")
    assert rig.proc("w").pid == watched and rig.proc("w").alive
    rig.run(3.5)  # then silence: past watchdog_timeout it is restarted
    assert rig.proc("w").pid != watched


def test_a_singleton_waiting_for_its_lock_says_so_and_settles_once_it_holds_it():
    rig = Rig(spec("s", singleton=True, startsecs=1.0))
    rig.sup.start()
    pid = rig.sup.records["s"].pid
    rig.sup.notified(pid, "lock-wait")
    assert rig.entry("s")["waiting"] == "singleton lock held by another instance"
    rig.world.now = 5.0
    rig.sup.notified(pid, "lock-held")
    rig.run(5.99)
    assert rig.entry("s")["state"] == "STARTING"  # startsecs counts from the lock
    rig.run(6.0)
    assert rig.entry("s")["state"] == "RUNNING"


# -- what a companion leaves behind ---------------------------------------------------------


def leaving_rig(*stop_delays: float | None) -> tuple[Rig, list]:
    """A companion whose main process exits, leaving pool children in its
    group; each exits this long after SIGTERM (None: ignores it)."""
    rig = Rig(spec("a", startsecs=0.0, restart_delay=30.0), stop_delay=None)
    rig.sup.start()
    rig.run(0.1)
    main = rig.proc("a")
    members = []
    for stop_delay in stop_delays:
        rig.world._fork_member(main, rig.world.behaviour(0))
        members.append(rig.world.procs[max(rig.world.procs)])
        members[-1].stop_delay = stop_delay
    rig.world.die(main, 0)
    rig.settle()
    return rig, members


def test_what_a_companion_left_in_its_group_gets_sigterm_then_sigkill_after_a_grace():
    rig, [member] = leaving_rig(None)  # ignores SIGTERM
    assert (f"Companion 'a' (pid {member.pgid}) left processes in its group; sent them SIGTERM"
            in rig.messages())
    assert rig.sup.next_deadline() == 0.1 + LEFTOVER_GRACE
    rig.run(0.1 + LEFTOVER_GRACE - 0.001)
    assert member.alive
    rig.run(0.1 + LEFTOVER_GRACE)
    assert not member.alive
    assert ("1 process(es) left behind by companion 'a' did not exit 2s after SIGTERM; "
            "sending SIGKILL") in rig.messages()
    assert rig.sup.leftovers == {}


def test_what_leaves_on_sigterm_is_forgotten_when_its_exit_is_reaped():
    rig, [member] = leaving_rig(0.05)
    assert rig.sup.leftovers
    rig.run(0.2)  # it exits, orphaned to the manager: reaped as no companion's
    assert not member.alive and rig.sup.leftovers == {}
    assert rig.sup.next_deadline() == rig.sup.records["a"].deadline  # its restart only
    assert "sending SIGKILL" not in rig.logged()


def test_a_companion_that_leaves_nothing_gets_no_grace():
    rig = Rig(spec("a", startsecs=0.0, restart_delay=30.0))
    rig.sup.start()
    rig.world.die(rig.proc("a"), 0)
    rig.settle()
    assert rig.sup.leftovers == {} and "left processes" not in rig.logged()


def test_a_quick_stop_gives_leftovers_no_grace_and_the_manager_finishes_only_once_they_are_gone():
    rig, [member] = leaving_rig(None)
    rig.sup.shutdown(quick=True)
    assert not rig.sup.finished()  # the leftovers have their grace
    rig.sup.kill_leftovers_now()
    rig.settle()
    assert not member.alive and rig.sup.leftovers == {}
    assert ("1 process(es) left behind by companion 'a' did not exit 2s after SIGTERM; "
            "sending SIGKILL") in rig.messages()
    assert rig.sup.finished()


def test_strays_that_left_their_group_are_killed_after_an_exit_and_ours_are_spared():
    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0), stop_delay=None)
    rig.sup.start()
    rig.run(0.1)
    a, b = rig.proc("a"), rig.proc("b")
    rig.world._fork_member(a, rig.world.behaviour(0))
    daemon = rig.world.procs[max(rig.world.procs)]
    daemon.pgid, daemon.parent = daemon.pid, 0  # setsid and double fork: orphaned to us
    rig.sup.kill_strays()
    assert not daemon.alive and a.alive and b.alive
    # and on the way out, when the session cannot be killed as a whole
    rig.world._fork_member(a, rig.world.behaviour(0))
    other = rig.world.procs[max(rig.world.procs)]
    other.pgid, other.parent = other.pid, 0
    rig.host.kill_session = lambda: False
    rig.sup.finish()
    assert not other.alive and a.alive


def test_finish_kills_the_managers_whole_session_when_it_can():
    rig = Rig(spec("a", startsecs=0.0), stop_delay=None)
    rig.sup.start()
    scanned = []
    rig.host.children = lambda: scanned.append(1) or []
    rig.sup.finish()
    assert not rig.proc("a").alive and scanned == []  # no /proc scan needed


# -- shutdown and waiters ----------------------------------------------------------------


def test_shutdown_stops_every_companion_and_says_so_once():
    rig = Rig(spec("a", startsecs=0.0), spec("b", startsecs=0.0, autostart=False))
    rig.sup.start()
    rig.sup.shutdown(quick=False)
    rig.sup.shutdown(quick=True)  # a quick stop overtakes the graceful one
    assert rig.messages().count("Companion manager stopping companions (graceful)") == 1
    assert "Companion manager stopping companions (quick)" not in rig.messages()
    assert rig.sup.records["a"].state.name == "STOPPING"
    rig.run(0.1)
    assert rig.sup.finished()


def test_a_waiter_is_answered_once_when_settled_and_a_removed_companion_says_so():
    rig = Rig(spec("a", startsecs=1.0), spec("b", startsecs=0.0, autostart=False))
    rig.sup.start()
    answers = []

    def running(record):
        return {"ok": True} if record.state.name == "RUNNING" else None

    def stopped(record):
        return {"ok": "stopped"} if record.state.name == "STOPPED" else None

    def running_then_stop(reply):
        # as a connection's next request would: a new waiter on the same
        # companion while its waiters are being answered
        answers.append(reply)
        rig.sup.wait_for("a", stopped, answers.append)

    rig.sup.wait_for("a", running, running_then_stop)
    rig.sup.wait_for("a", stopped, answers.append)
    rig.sup.wait_for("b", running, answers.append)
    rig.sup.wait_for("b", running, answers.append)
    rig.run(0.5)
    assert answers == [] and set(rig.sup.waiters) == {"a", "b"}
    rig.run(1.0)
    assert answers == [{"ok": True}] and len(rig.sup.waiters["a"]) == 2
    rig.sup.request("a", "stop")
    rig.run(1.5)
    assert answers == [{"ok": True}, {"ok": "stopped"}, {"ok": "stopped"}]
    rig.config = CompanionConfig((spec("a", startsecs=1.0),))
    rig.sup.reread()
    assert answers[3:] == [protocol.error("removed", "b was removed from the configuration")] * 2
    assert rig.sup.waiters == {}


# -- reaping -------------------------------------------------------------------------------


def test_one_sigchld_handles_every_exit_an_orphans_included():
    rig = Rig(spec("a", startsecs=0.0, restart_delay=30.0), spec("b", startsecs=0.0,
                                                                  restart_delay=0.1),
              stop_delay=None)
    rig.sup.start()
    rig.run(0.1)
    rig.world._fork_member(rig.proc("a"), rig.world.behaviour(0))
    orphan = rig.world.procs[max(rig.world.procs)]
    orphan.stop_delay = None  # it ignores the SIGTERM its group gets
    rig.world.die(rig.proc("a"), 0)  # its pool child is orphaned to the manager
    rig.world.die(rig.proc("b"), 0)
    rig.run(0.5)  # b restarted: its pid is after the orphan's
    told = []
    rig.host.exited = told.append
    b = rig.proc("b")
    assert orphan.alive and orphan.pid < b.pid  # reaped first
    rig.world.die(orphan, 0)
    rig.world.die(b, 3 << 8)  # both exit before the manager's loop wakes
    loop.handle_signal(rig.sup, signal.SIGCHLD)
    assert rig.entry("b")["state"] == "BACKOFF" and rig.entry("b")["last_exit"] == {"code": 3}
    assert told == [b.pid]  # the host flushes its last output before the exit is handled
    assert rig.sup.leftovers == {}


def test_status_forgets_the_memory_of_a_companion_that_exited():
    rig = Rig(spec("a", startsecs=0.0, max_memory=100 * MiB, restart_delay=30.0))
    rig.sup.start()
    rig.run(1.5)
    assert rig.entry("a")["memory"] == 10 * MiB
    rig.world.die(rig.proc("a"), 0)
    rig.run(1.6)
    assert "memory" not in rig.entry("a")


def test_companions_that_crash_together_do_not_restart_in_lockstep():
    rig = Rig(*(spec(n, startsecs=5.0, restart_delay=1.0) for n in "abc"))
    rig.sup.start()
    for crash in (0.5, 2.0):  # the second failed start in a row is where the spread starts
        rig.run(crash)
        for name in "abc":
            rig.world.die(rig.proc(name), 3 << 8)
        rig.settle()
    retries = [rig.sup.records[n].deadline - 2.0 for n in "abc"]
    assert len(set(retries)) == 3
    assert all(1.8 <= r <= 2.2 for r in retries)  # 2 s, spread by +-10%


def test_a_leftover_group_is_kept_until_its_last_member_is_gone():
    rig, [member, stubborn] = leaving_rig(0.05, None)
    rig.run(0.2)  # the first exits on SIGTERM and is reaped; the other ignores it
    assert not member.alive and stubborn.alive and rig.sup.leftovers
    rig.run(0.1 + LEFTOVER_GRACE)
    assert not stubborn.alive and rig.sup.leftovers == {}


def test_a_control_request_is_logged_with_what_and_whom():
    rig = Rig(spec("a", startsecs=0.0))
    rig.sup.start()
    rig.sup.request("a", "restart")
    assert "Control request: restart a" in rig.messages()


# -- timers ---------------------------------------------------------------------------------


def test_the_next_deadline_is_the_earliest_of_memory_check_leftover_and_timer():
    rig = Rig(spec("a", startsecs=5.0, max_memory=100 * MiB))
    rig.sup.start()
    assert rig.sup.next_deadline() == 1.0  # the memory check, before startsecs passes
    rig.sup.request("a", "stop")  # STOPPING: the startsecs timer is stale now
    rig.sup.next_memory_check = None
    assert rig.sup.next_deadline() == 10.0  # stop_timeout, found behind the stale entry
    # what a companion left gets SIGKILL after the memory check that comes first
    rig = Rig(spec("b", startsecs=0.0, max_memory=100 * MiB, restart_delay=30.0))
    rig.sup.start()
    rig.world._fork_member(rig.proc("b"), rig.world.behaviour(0))
    rig.world.procs[max(rig.world.procs)].stop_delay = None
    rig.world.die(rig.proc("b"), 0)
    rig.settle()
    assert rig.sup.leftovers and rig.sup.next_deadline() == 1.0


def test_a_companion_heartbeating_for_long_keeps_the_timer_heap_bounded_and_its_watchdog():
    # s's startsecs timer stays at the top of the heap: the stale entries
    # each heartbeat leaves beneath it do not surface to be dropped
    rig = Rig(spec("w", startsecs=0.0, watchdog_timeout=60.0), spec("s", startsecs=30.0))
    rig.sup.start()
    pid = rig.proc("w").pid
    sizes = []
    for beat in range(1, 400):  # every heartbeat moves the watchdog deadline on
        rig.run(beat * 0.01)
        rig.sup.notified(pid, "heartbeat")
        sizes.append(len(rig.sup.timers))
    assert max(sizes) == 2 * 2 + 64 + 1  # then rebuilt from the records
    assert sizes.count(max(sizes)) < 10  # rebuilt, not grown
    assert rig.entry("s")["state"] == "STARTING"
    rig.run(30.0)
    assert rig.entry("s")["state"] == "RUNNING"  # its timer survived every rebuild
    rig.run(3.99 + 59.99)
    assert rig.proc("w").pid == pid
    rig.run(3.99 + 60.0)  # silent for watchdog_timeout: restarted
    assert rig.proc("w").pid != pid


def test_a_sweep_for_strays_runs_once_per_exit_not_on_every_loop_turn():
    rig = Rig(spec("a", startsecs=0.0, restart_delay=0.5))
    scans = []
    rig.host.children = lambda real=rig.host.children: scans.append(rig.world.now) or real()
    rig.sup.start()
    rig.run(1.0)
    assert scans == []  # nothing exited: /proc is not read
    rig.world.die(rig.proc("a"), 0)
    rig.run(1.1)
    rig.sup.fire_due()
    assert scans == [1.0]  # once, in the loop turn that reaped it


def test_companions_started_together_are_recycled_at_spread_times():
    rig = Rig(*(spec(n, startsecs=0.0, max_lifetime=60.0, max_lifetime_jitter=30.0)
                for n in "abc"))
    rig.sup.start()
    recycles = [rig.sup.records[n].lifetime_at for n in "abc"]
    assert len(set(recycles)) == 3 and all(60.0 <= t <= 90.0 for t in recycles)


def test_log_lines_keep_their_level():
    rig = Rig(spec("a", startsecs=5.0, restart_delay=1.0))
    levels = []
    rig.log.log = lambda level, fmt, *args: levels.append((level, fmt % args))
    rig.sup.start()
    rig.world.die(rig.proc("a"), 3 << 8)
    rig.settle()
    assert levels == [
        (logging.INFO, "companion 'a' (pid 100) starting"),
        (logging.ERROR,
         "companion 'a' (pid 100) exited unexpectedly with exit code 3; restarting in 1s")]


def test_a_companion_runs_the_target_resolved_for_it():
    rig = Rig(spec("a"))
    targets = {}

    def spawn(spec, target, *, lock_path, identity, real=rig.host.spawn, **more):
        targets[spec.name] = target
        return real(spec, target, lock_path=lock_path, identity=identity, **more)

    rig.host.spawn = spawn
    rig.config = CompanionConfig((spec("a"), spec("b")))
    rig.sup.reread()
    assert targets == {"b": "target of b"}


def test_a_removed_command_companion_is_retired_though_it_has_no_target():
    rig = Rig(spec("cmd", startsecs=0.0, target=None, command=("rq", "worker")),
              spec("py", startsecs=0.0))
    del rig.sup.targets["cmd"]  # as boot resolves them: a command has no callable
    rig.sup.start()
    rig.config = CompanionConfig((spec("py", startsecs=0.0),))
    ok, message, _ = rig.sup.reread()
    assert (ok, message) == (True, "removed: cmd")
    rig.run(1.0)
    assert list(rig.sup.records) == ["py"] and rig.sup.retiring == set()
    assert "cmd" not in rig.sup.targets


# The four below are fast twins of tests/test_control.py's end-to-end tests of
# the same names. The stop test stays there too (it pins how a real process
# dies of SIGTERM, and SIGHUP forwarded by a real master); the other three
# moved here: what they pinned needs no kernel (test_status_answers_while_a_
# stop_is_pending and tests/test_stopping.py still stop real processes).


def test_stop_answers_once_stopped_and_the_companion_stays_stopped():
    rig = Rig(spec("alpha", startsecs=0.0), stop_delay=0.1)
    rig.sup.start()
    rig.run(0.5)
    alpha = rig.proc("alpha")
    answers = ask(rig, "stop", "alpha")
    rig.run(0.59)
    assert answers == [] and alpha.alive  # not before it is gone
    rig.run(0.6)
    assert answers == [{"ok": True, "message": "alpha stopped (exit code 0)"}]
    assert not alpha.alive
    # neither time nor an unchanged reread nor SIGHUP brings it back
    rig.run(5.0)
    assert ask(rig, "reread")[0]["ok"]
    loop.handle_signal(rig.sup, signal.SIGHUP)
    assert rig.messages().count("Companion config reread: no changes") == 2
    rig.run(10.0)
    assert rig.entry("alpha")["state"] == "STOPPED" and starts(rig, "alpha") == [alpha.pid]
    assert ask(rig, "stop", "alpha") == [{"ok": True, "message": "alpha is already STOPPED"}]
    # until it is started by hand
    answers = ask(rig, "start", "alpha")
    rig.run(10.5)
    new = rig.proc("alpha").pid
    assert answers == [{"ok": True, "message": f"alpha started (pid {new})", "pid": new}]
    assert rig.entry("alpha")["state"] == "RUNNING" and starts(rig, "alpha") == [alpha.pid, new]


def test_start_on_a_running_companion_is_an_ok_no_op():
    rig = Rig(spec("alpha", startsecs=0.0))
    rig.sup.start()
    pid = rig.proc("alpha").pid
    assert ask(rig, "start", "alpha") == [
        {"ok": True, "message": f"alpha is already running (pid {pid})", "pid": pid}]
    rig.run(1.0)
    assert starts(rig, "alpha") == [pid]


def test_restart_replaces_the_process():
    rig = Rig(spec("alpha", startsecs=0.0), stop_delay=0.1)
    rig.sup.start()
    old = rig.proc("alpha")
    answers = ask(rig, "restart", "alpha")
    rig.run(1.0)
    new = rig.proc("alpha")
    assert answers == [{"ok": True, "message": f"alpha started (pid {new.pid})",
                        "pid": new.pid}]
    assert new.pid != old.pid and not old.alive and new.alive


def test_restart_kills_a_companion_that_outlives_reload_timeout():
    rig = Rig(spec("stubborn", startsecs=0.0, reload_timeout=0.3, stop_timeout=60.0),
              stop_delay=None)  # it ignores SIGTERM
    rig.sup.start()
    old = rig.proc("stubborn")
    answers = ask(rig, "restart", "stubborn")
    rig.run(0.29)
    assert old.alive and answers == []
    rig.run(0.3)
    new = rig.proc("stubborn")
    assert not old.alive and new.alive and answers[0]["ok"] and answers[0]["pid"] == new.pid
    assert any(f"companion 'stubborn' (pid {old.pid}) did not exit in time after SIGTERM" in m
               for m in rig.messages())
