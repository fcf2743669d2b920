"""Deterministic simulation of the companion manager.

The real supervisor (supervisor.py), the real signal handling of the loop
(loop.handle_signal) and the real control commands (commands.dispatch) run
against ``SimHost``: a virtual process table and a virtual clock. Each seed
draws random companion configs, random process behaviour and a random
schedule of faults and requests; after every step the invariants below are
checked. A whole run is a function of its seed, so any failure replays.

    python tests/simulation.py --seeds 1000      (make simulate SEEDS=1000)
    python tests/simulation.py --seed 17          (make simulate SEED=17)
    python tests/simulation.py --seed 17 --keep 0,4,9   (a shrunk schedule)

docs/development.md explains how to read, extend and trust it.
"""

from __future__ import annotations

import argparse
import collections
import errno
import heapq
import itertools
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field, replace

from gunicorn_companion import commands, handle, handshake, protocol
from gunicorn_companion.loading import CompanionConfig
from gunicorn_companion.loop import handle_signal
from gunicorn_companion.spec import CompanionSpec
from gunicorn_companion.states import PROCESS_STATES, QUIESCENT_STATES, State
from gunicorn_companion.supervisor import LEFTOVER_GRACE, Supervisor

EPS = 1e-6
MiB = 2**20
UNNAMED_SIGNAL = 40  # a real-time signal: no name
MANAGER = 0  # the parent of the manager's own children in the table


class Violation(AssertionError):
    """An invariant does not hold."""


# -- the virtual process table ----------------------------------------------------


@dataclass
class Proc:
    pid: int
    pgid: int
    name: str  # the companion it belongs to
    parent: int  # MANAGER, or the pid of its companion (a group member)
    generation: int  # which manager's tree
    main: bool  # the companion's main process (else a member of its group)
    stop_delay: float | None  # seconds it takes to exit after a stop signal; None: ignores it
    alive: bool = True
    status: int | None = None  # wait status once dead
    reaped: bool = False
    died_at: float | None = None
    lock: str | None = None  # the lock file it holds (flock, inherited by its members)
    memory: int = 10 * MiB
    heartbeating: bool = True
    exiting: bool = False  # an exit is already scheduled


def exit_status(code: int | None = None, sig: int | None = None) -> int:
    """A wait status as the kernel makes it."""
    return sig if sig is not None else (code & 0xFF) << 8


class SimOutput:
    """The output sinks as the supervisor sees them: tail, dropped, owner_of."""

    def __init__(self):
        self.dropped: collections.Counter[str] = collections.Counter()
        self.owner_of = lambda spec: None
        self.failing: int | None = None  # an errno: ENOSPC, EIO, EPIPE, or EAGAIN (blocked)

    def tail(self, names, count):
        return []

    def since(self, names, after):
        return [], after


class SimLog:
    """A logger that keeps the last lines for a failure's report."""

    def __init__(self, world: "World"):
        self.world = world
        self.lines: collections.deque[str] = collections.deque(maxlen=60)

    def log(self, level, fmt, *args):
        self.lines.append(f"{self.world.now:9.3f} {fmt % args if args else fmt}")

    def info(self, fmt, *args):
        self.log(20, fmt, *args)

    warning = error = exception = debug = info

    def reopen_files(self):
        pass


class World:
    """The virtual kernel: processes, locks, a clock and pending happenings."""

    def __init__(self, seed: int):
        self.seed = seed
        self.now = 0.0
        self.rng = random.Random(f"host:{seed}")
        self.procs: dict[int, Proc] = {}
        self._pids = itertools.count(100)
        self.generation = 0
        self.lock_holders: dict[str, set[int]] = collections.defaultdict(set)
        self.lock_queue: dict[str, list[int]] = collections.defaultdict(list)
        self.happenings: list[tuple[float, int, object]] = []  # (time, seq, callable)
        self._seq = itertools.count()
        self.sigchld = False
        self.spawn_faults: list[int] = []
        self.output = SimOutput()
        self.supervisor: Supervisor | None = None
        self.manager: SimManager | None = None  # the last manager forked
        # the fast tests' world (tests/test_supervisor.py): when set, every
        # process exits this many seconds after a stop signal (None: ignores
        # it) and does nothing on its own (no crash, no pool child)
        self.scripted: float | None | bool = False

    def manager_up(self) -> bool:
        return self.manager is not None and self.manager.alive

    def at(self, when: float, what) -> None:
        heapq.heappush(self.happenings, (when, next(self._seq), what))

    def behaviour(self, pid: int) -> random.Random:
        # keyed by the pid, not drawn from one stream: a shrunk schedule keeps
        # each process's behaviour
        return random.Random(f"proc:{self.seed}:{pid}")

    def live(self):
        return [p for p in self.procs.values() if p.alive]

    def notify(self, pid: int, what: str) -> None:
        proc = self.procs[pid]
        if proc.alive and proc.generation == self.generation and self.manager_up():
            self.supervisor.notified(pid, what)

    # -- process life -----------------------------------------------------------

    def spawn(self, spec: CompanionSpec, lock_path: str | None) -> int:
        if self.spawn_faults:
            code = self.spawn_faults.pop(0)
            raise OSError(code, os.strerror(code))
        pid = next(self._pids)
        rng = self.behaviour(pid)
        stop_delay = rng.choice([0.01, 0.2, 1.0, 3.0, 12.0, None])
        scripted = self.scripted is not False
        proc = self.procs[pid] = Proc(pid, pid, spec.name, MANAGER, self.generation, True,
                                      self.scripted if scripted else stop_delay)
        if scripted:
            if lock_path is not None:
                self.at(self.now, lambda: self._take_lock(proc, lock_path))
            return pid
        if rng.random() < 0.1:  # fails at once (an import error, a bad argument)
            self.at(self.now + rng.uniform(0.0, 0.3), lambda: self.exit(proc, code=1))
        elif rng.random() < 0.25:  # crashes later on its own
            status = rng.choice([exit_status(code=rng.randrange(256)),
                                 exit_status(sig=signal.SIGSEGV), exit_status(sig=UNNAMED_SIGNAL)])
            self.at(self.now + rng.uniform(0.1, 30.0), lambda: self._die_unless_dead(proc, status))
        if lock_path is not None:
            self.at(self.now, lambda: self._take_lock(proc, lock_path))
        elif spec.wait_ready:
            self.at(self.now + rng.uniform(0.0, 2.0), lambda: self.notify(pid, "ready"))
        if spec.watchdog_timeout:
            self._heartbeat(proc, spec.watchdog_timeout / 3)
        if rng.random() < 0.3:  # a pool child in its group
            self.at(self.now + 0.01, lambda: self._fork_member(proc, rng))
        return pid

    def _fork_member(self, parent: Proc, rng: random.Random) -> None:
        if not parent.alive:
            return
        pid = next(self._pids)
        self.procs[pid] = Proc(pid, parent.pgid, parent.name, parent.pid, parent.generation,
                               False, rng.choice([0.05, 1.0, None]), lock=parent.lock)
        if parent.lock:
            self.lock_holders[parent.lock].add(pid)

    def _take_lock(self, proc: Proc, path: str) -> None:
        if not proc.alive:
            return
        if self.lock_holders[path]:
            self.lock_queue[path].append(proc.pid)
            self.notify(proc.pid, "lock-wait")
            return
        self._hold(proc, path)

    def _hold(self, proc: Proc, path: str) -> None:
        proc.lock = path
        self.lock_holders[path].add(proc.pid)
        self.notify(proc.pid, "lock-held")
        spec = self.supervisor.records.get(proc.name) if self.supervisor else None
        if spec is not None and spec.spec.wait_ready:
            delay = self.behaviour(proc.pid).uniform(0.0, 2.0)
            self.at(self.now + delay, lambda: self.notify(proc.pid, "ready"))

    def _heartbeat(self, proc: Proc, every: float) -> None:
        def beat():
            if proc.alive and proc.heartbeating:
                self.notify(proc.pid, "heartbeat")
                self.at(self.now + every, beat)
        self.at(self.now + every, beat)

    def deliver(self, proc: Proc, sig: int) -> None:
        if not proc.alive:
            return
        if sig == signal.SIGKILL:
            return self.die(proc, exit_status(sig=signal.SIGKILL))
        if sig in (signal.SIGSTOP, signal.SIGCONT, signal.SIGCHLD):
            return
        if proc.stop_delay is None or proc.exiting:
            return  # ignores it (or is already on its way out)
        proc.exiting = True
        status = exit_status(code=0) if sig == signal.SIGTERM else exit_status(sig=sig)
        self.at(self.now + proc.stop_delay, lambda: self.die(proc, status))

    def exit(self, proc: Proc, code: int) -> None:
        self._die_unless_dead(proc, exit_status(code=code))

    def _die_unless_dead(self, proc: Proc, status: int) -> None:
        if proc.alive:
            self.die(proc, status)

    def die(self, proc: Proc, status: int) -> None:
        proc.alive, proc.status, proc.died_at = False, status, self.now
        if proc.lock:
            holders = self.lock_holders[proc.lock]
            holders.discard(proc.pid)
            queue = self.lock_queue[proc.lock]
            while not holders and queue:
                waiter = self.procs[queue.pop(0)]
                if waiter.alive:
                    self._hold(waiter, proc.lock)
        for child in self.procs.values():
            if child.parent == proc.pid and child.alive:
                child.parent = MANAGER  # the manager is the subreaper
        if proc.parent == MANAGER and proc.generation == self.generation and self.manager_up():
            self.sigchld = True
        else:
            proc.reaped = True  # its parent (or init, for a dead manager's) reaps it


class SimHost:
    """The Host of host.py over the World."""

    def __init__(self, world: World):
        self.world = world
        self.output = world.output
        self.followers: list = []

    def now(self):
        return self.world.now

    def random(self):
        return self.world.rng.random()

    def spawn(self, spec, target, *, lock_path, identity, fencing_token=None):
        return self.world.spawn(spec, lock_path)

    def _ours(self, pid):
        proc = self.world.procs.get(pid)
        return proc if proc is not None and not proc.reaped else None

    def signal_process(self, pid, sig):
        proc = self._ours(pid)
        if proc is None:
            return False
        self.world.deliver(proc, sig)
        return True

    def signal_group(self, pgid, sig):
        members = [p for p in self.world.procs.values() if p.pgid == pgid and not p.reaped]
        for proc in members:
            self.world.deliver(proc, sig)
        return bool(members)

    def reap(self):
        for proc in list(self.world.procs.values()):
            if (not proc.alive and not proc.reaped and proc.parent == MANAGER
                    and proc.generation == self.world.generation):
                proc.reaped = True
                yield proc.pid, proc.status

    def exited(self, pid):
        pass

    def group_members(self, pgid):
        return [p.pid for p in self.world.live() if p.pgid == pgid]

    def process_groups(self, pgids):
        groups = {}
        for proc in self.world.live():
            if proc.pgid in pgids:
                groups.setdefault(proc.pgid, []).append(proc.pid)
        return groups

    def children(self):
        return [(p.pid, p.pgid) for p in self.world.live()
                if p.parent == MANAGER and p.generation == self.world.generation]

    def private_bytes(self, pid):
        proc = self.world.procs.get(pid)
        return proc.memory if proc is not None and proc.alive else 0

    def master_gone(self):
        return False

    def follow(self, names, responder):
        self.followers.append(responder)

    def reopen_output(self):
        self.world.output.failing = None

    def kill_session(self):
        for proc in self.world.live():
            if proc.generation == self.world.generation:
                self.world.deliver(proc, signal.SIGKILL)
        return True

    def close(self):
        pass


@dataclass
class SimManager:
    """A manager process as its master sees it: a pid, an exit, a lifeline."""
    pid: int
    generation: int
    alive: bool = True
    status: int | None = None
    reaped: bool = False
    report: bytes = b""  # written on the lifeline, not read yet


class SimMaster:
    """The master's host (handle.MasterHost) over the World: the real
    ManagerDriver forks, signals, claims and reads lifelines through it."""

    def __init__(self, sim: "Simulation"):
        self.sim = sim
        self.world = sim.world
        self.log = sim.log

    def now(self):
        return self.world.now

    def fork_manager(self, at_boot):
        return self.sim.fork_manager()

    def signal(self, pid, sig):
        manager = self.world.manager
        if manager is None or manager.pid != pid or not manager.alive:
            return
        if sig == signal.SIGKILL:
            self.sim.manager_dies(signal.SIGKILL)
        else:
            self.sim.manager_signal(sig)

    def claim(self, pid):
        manager = self.world.manager
        if manager is None or manager.pid != pid or manager.alive or manager.reaped:
            return False, None
        manager.reaped = True
        return True, manager.status

    def _readable(self) -> bool:
        return bool(self.world.manager and self.world.manager.report) or self.tree_gone()

    def tree_gone(self) -> bool:
        """EOF on the lifeline: the manager and every process of its tree exited."""
        world = self.world
        return (world.manager is None or not world.manager.alive) and not any(
            p.generation == world.generation for p in world.live())

    def read_lifeline(self, wait):
        self.sim.wait_world(wait, self._readable)
        manager = self.world.manager
        if manager is not None and manager.report:
            data, manager.report = manager.report, b""
            return data
        return b"" if self.tree_gone() else None

    def sweep_session(self, leader):
        world = self.world
        for proc in world.live():
            if world.manager and world.manager.pid == leader and (
                    proc.generation == world.manager.generation):
                # a process in uninterruptible sleep (disk I/O, say) dies of
                # SIGKILL only when that ends: the lifeline's EOF, not the
                # sweep, says the tree is gone
                delay = world.behaviour(proc.pid).choice([0.0, 0.0, 0.0, 0.5, 2.0])
                world.at(world.now + delay,
                         lambda p=proc: world._die_unless_dead(p, exit_status(sig=signal.SIGKILL)))


# -- configs and schedules -----------------------------------------------------


NAMES = ("a", "b", "c", "d", "e")


def draw_spec(rng: random.Random, name: str) -> CompanionSpec:
    stop_timeout = rng.choice([0.5, 2.0, 10.0])
    return CompanionSpec(
        name=name, target="sim:target",
        stop_signal=rng.choice([signal.SIGTERM, signal.SIGTERM, signal.SIGINT]),
        stop_timeout=stop_timeout,
        reload_timeout=rng.choice([None, stop_timeout / 2]),
        stop_as_group=rng.random() < 0.3,
        startsecs=rng.choice([0.0, 0.5, 1.0]),
        restart_delay=rng.choice([0.1, 1.0]),
        max_restart_delay=rng.choice([2.0, 10.0]),
        startretries=rng.choice([None, None, 0, 2]),
        autostart=rng.random() < 0.85,
        singleton=rng.random() < 0.35,
        wait_ready=rng.random() < 0.25,
        max_lifetime=rng.choice([None, None, 5.0, 30.0]),
        max_lifetime_jitter=rng.choice([0.0, 2.0]),
        max_memory=rng.choice([None, None, 100 * MiB]),
        watchdog_timeout=rng.choice([None, None, 3.0]),
    )


def draw_config(rng: random.Random) -> CompanionConfig:
    names = rng.sample(NAMES, rng.randint(1, len(NAMES)))
    return CompanionConfig(tuple(draw_spec(rng, n) for n in sorted(names)))


def change_config(rng: random.Random, config: CompanionConfig) -> CompanionConfig:
    """A reread's new config: some companions added, removed or changed."""
    specs = {s.name: s for s in config.specs}
    for name in NAMES:
        roll = rng.random()
        if name not in specs and roll < 0.3:
            specs[name] = draw_spec(rng, name)
        elif name in specs and roll < 0.15:
            del specs[name]
        elif name in specs and roll < 0.45:
            specs[name] = replace(specs[name], stop_timeout=rng.choice([0.5, 2.0, 10.0]),
                                  singleton=rng.random() < 0.35)
    return CompanionConfig(tuple(specs[n] for n in sorted(specs)))


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    args: tuple = ()

    def __str__(self):
        return f"t={self.at:7.3f} {self.kind} {' '.join(map(str, self.args))}".rstrip()


def draw_schedule(rng: random.Random, length: int) -> list[Event]:
    events, now = [], 0.0
    for _ in range(length):
        now += rng.choice([0.0, 0.01, 0.1, 0.5, 1.0, 3.0, 8.0])
        kind = rng.choices(
            ["start", "stop", "restart", "status", "reread", "crash", "spawn_fault",
             "output_fault", "memory", "hang", "signal", "manager_death"],
            weights=[6, 6, 6, 2, 4, 6, 2, 2, 2, 2, 3, 1])[0]
        name = rng.choice(NAMES + ("nope",))
        if kind in ("start", "stop", "restart", "status"):
            args = (name,)
        elif kind == "crash":
            args = (name, rng.choice(["code", "named", "unnamed"]), rng.randrange(256))
        elif kind == "spawn_fault":
            args = (rng.choice([errno.EAGAIN, errno.ENOMEM]),)
        elif kind == "output_fault":
            args = (rng.choice([errno.ENOSPC, errno.EIO, errno.EPIPE, errno.EAGAIN]),)
        elif kind in ("memory", "hang"):
            args = (name,)
        elif kind == "signal":
            args = (rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                                signal.SIGHUP, signal.SIGUSR1]),)
        else:
            args = ()
        events.append(Event(now, kind, args))
    return events


# -- the run ------------------------------------------------------------------------


@dataclass
class Request:
    cmd: str
    name: str | None
    old_pid: int | None  # the companion's main process when a stop was asked
    answers: list = field(default_factory=list)


class Simulation:
    def __init__(self, seed: int, schedule: list[Event] | None = None):
        self.seed = seed
        rng = random.Random(f"config:{seed}")
        self.config = draw_config(rng)
        self.config_rng = random.Random(f"reread:{seed}")
        self.schedule = schedule if schedule is not None else draw_schedule(
            random.Random(f"schedule:{seed}"), rng.randint(5, 40))
        self.world = World(seed)
        self.requests: list[Request] = []
        self.steps = 0
        self.log = SimLog(self.world)
        self.final = False  # the closing shutdown has begun
        self.killed_at_final = False  # the master had to SIGKILL the manager then
        self.handle = handle.ManagerDriver(SimMaster(self))
        self.handle.start_at_boot()

    def fork_manager(self) -> int:
        """The master forks a manager (at the start, or replacing one that
        died or stopped): a fresh supervisor over the current config."""
        world = self.world
        # the replacement starts only after the old tree is gone
        if left := [p.pid for p in world.live()]:
            raise Violation(f"a new manager forked while the old tree lives: pids {left}")
        world.generation += 1
        world.manager = SimManager(next(world._pids), world.generation)
        sup = Supervisor(
            self.config, {s.name: None for s in self.config.specs},
            host=SimHost(world), log=self.log,
            load_config=lambda: self.config,
            resolve=lambda specs: {s.name: None for s in specs},
            master_pid=1, lock_dir="/sim/locks", lock_scope="sim",
            memory_check_interval=1.0,
        )
        world.supervisor = sup
        sup.start()
        world.manager.report = handshake.READY
        self.settle()
        return world.manager.pid

    @property
    def sup(self) -> Supervisor:
        return self.world.supervisor

    # -- driving ------------------------------------------------------------------

    def settle(self) -> None:
        """What the loop does after each readiness event: reap on SIGCHLD,
        fire what is due, until nothing more happens at this instant."""
        if not self.world.manager_up():
            return
        for _ in range(1000):
            if self.world.sigchld:
                self.world.sigchld = False
                handle_signal(self.sup, signal.SIGCHLD)
            self.sup.fire_due()
            if not self.world.sigchld:
                break
        else:
            raise Violation("the loop does not settle: endless work at one instant")
        if self.sup.finished():
            # a manager that finished on a signal exits 0 (the master replaces it)
            self.sup.finish()
            self.manager_gone(exit_status(code=0))

    def master_turn(self) -> None:
        """A turn of the master's main loop: reap the manager, maintain it."""
        self.handle.claim()
        self.handle.maintain(wanted=bool(self.config.specs))

    def run(self) -> None:
        pending = collections.deque(self.schedule)
        horizon = (self.schedule[-1].at if self.schedule else 0.0) + 1.0
        while True:
            when = self._next_time(pending)
            if when is None or when > horizon:
                break
            self._advance(when, pending)
        # the end: the master stops; the manager's graceful stop must finish
        # in time, with nothing left
        self.world.now = max(self.world.now, horizon)
        self.final = True
        limit = 20 * max([s.stop_timeout for s in self.config.specs] + [1.0])
        self.handle.shutdown(graceful=True, timeout=limit)
        if self.killed_at_final:
            raise Violation(f"the final shutdown did not finish in {limit:.3f}s")
        self.world.now += 0.001  # PDEATHSIG and the session kill land
        self.check()
        if left := [p.pid for p in self.world.live()]:
            raise Violation(f"processes left after the final shutdown: {left}")
        for request in self.requests:
            if len(request.answers) != 1:
                raise Violation(f"{request.cmd} {request.name} got {len(request.answers)} "
                                "answers, not one")

    def _next_time(self, pending, master: bool = True) -> float | None:
        times = []
        if self.world.happenings:
            times.append(self.world.happenings[0][0])
        if pending:
            times.append(pending[0].at)
        if self.world.manager_up():
            deadline = self.sup.next_deadline()
            if deadline is not None:
                times.append(deadline)
        state = self.handle.handle
        if master and state.phase is handle.Phase.IDLE and self.config.specs:
            times.append(state.next_spawn_at)
        return min(times) if times else None

    def _advance(self, when: float, pending, master: bool = True) -> None:
        world = self.world
        world.now = max(world.now, when)
        if world.happenings and world.happenings[0][0] <= world.now:
            _, _, what = heapq.heappop(world.happenings)
            what()
        elif pending and pending[0].at <= world.now:
            self.perform(pending.popleft())
        self.settle()
        if master:
            self.master_turn()
        self.steps += 1
        self.check()

    def wait_world(self, timeout: float, until) -> None:
        """The master blocks (a select on the lifeline) while the world goes on."""
        deadline = self.world.now + timeout
        while not until():
            when = self._next_time(collections.deque(), master=False)
            if when is None or when > deadline:
                self.world.now = max(self.world.now, deadline)
                return
            self._advance(when, collections.deque(), master=False)

    # -- events --------------------------------------------------------------

    def main_proc(self, name: str) -> Proc | None:
        if not self.world.manager_up():
            return None
        record = self.sup.records.get(name)
        if record is None or record.pid is None:
            return None
        return self.world.procs.get(record.pid)

    def perform(self, event: Event) -> None:
        world, sup = self.world, self.sup
        kind, args = event.kind, event.args
        if kind in ("start", "stop", "restart", "status"):
            self.control(kind, args[0])
        elif kind == "reread":
            self.config = change_config(self.config_rng, self.config)
            self.control("reread", None)
        elif kind == "crash":
            proc = self.main_proc(args[0])
            if proc is not None and proc.alive:
                how, number = args[1], args[2]
                status = {"code": exit_status(code=number),
                          "named": exit_status(sig=signal.SIGABRT),
                          "unnamed": exit_status(sig=UNNAMED_SIGNAL)}[how]
                world.die(proc, status)
        elif kind == "spawn_fault":
            world.spawn_faults.append(args[0])
        elif kind == "output_fault":
            world.output.failing = args[0]
            for name in sup.records:
                world.output.dropped[name] += 1
        elif kind == "memory":
            proc = self.main_proc(args[0])
            if proc is not None:
                proc.memory = 200 * MiB
        elif kind == "hang":
            proc = self.main_proc(args[0])
            if proc is not None:
                proc.heartbeating = False
        elif kind == "signal":
            self._manager_signal(args[0])
        elif kind == "manager_death":
            self.manager_dies()
        else:
            raise ValueError(kind)

    def _manager_signal(self, signum: int) -> None:
        if self.world.manager_up():
            self.manager_signal(signum)

    def manager_signal(self, signum: int) -> None:
        handle_signal(self.sup, signum)
        self.settle()

    def control(self, cmd: str, name: str | None) -> None:
        proc = self.main_proc(name) if name else None
        request = Request(cmd, name, proc.pid if proc else None)
        self.requests.append(request)
        if not self.world.manager_up():
            request.answers.append({"ok": False, "error": "connection refused"})
            return

        def respond(reply: dict) -> None:
            request.answers.append(reply)
            if len(request.answers) > 1:
                raise Violation(f"{cmd} {name} answered twice: {request.answers}")
            if cmd == "stop" and reply.get("ok") and request.old_pid is not None:
                old = self.world.procs[request.old_pid]
                if not old.reaped:
                    raise Violation(f"stop {name} answered ok while pid {old.pid} still lives")

        commands.dispatch(self.sup, protocol.Request(cmd, name), respond)

    def manager_dies(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILLed: PDEATHSIG takes its companions; what they forked lives
        on until the master sweeps the session."""
        if not self.world.manager_up():
            return
        world = self.world
        if self.final:
            self.killed_at_final = True
        companions = [p for p in world.live()
                      if p.generation == world.generation and p.parent == MANAGER]
        self.manager_gone(exit_status(sig=sig))
        for proc in companions:
            world.die(proc, exit_status(sig=signal.SIGKILL))

    def manager_gone(self, status: int) -> None:
        """The manager exited: open control connections close (an answer:
        EOF); init reaps its children from now on."""
        world = self.world
        for request in self.requests:
            if not request.answers:
                request.answers.append({"ok": False, "error": "connection closed"})
        world.manager.alive, world.manager.status = False, status
        for proc in world.procs.values():
            if not proc.alive:
                proc.reaped = True
        world.sigchld = False

    # -- invariants -------------------------------------------------------------------

    def check(self) -> None:
        world, sup = self.world, self.sup
        now = world.now
        procs = world.procs
        mine = {p.pid: p for p in procs.values() if p.generation == world.generation}
        # a singleton never has two live instances
        holders: dict[str, set[int]] = collections.defaultdict(set)
        for proc in world.live():
            if proc.lock is not None:
                holders[proc.name].add(proc.pgid)
        for name, groups in holders.items():
            if len(groups) > 1:
                raise Violation(f"singleton {name} runs twice: process groups {sorted(groups)}")
        if len(world.happenings) > 10_000:
            raise Violation("the world's queue grew without bound")
        if not world.manager_up():
            return  # what follows is about a running manager's records
        for name, record in sup.records.items():
            proc = procs.get(record.pid) if record.pid else None
            # the reported state matches the process table
            if record.state in PROCESS_STATES and record.pid is not None:
                if proc is None or proc.reaped or not proc.main or proc.name != name:
                    raise Violation(f"{name} is {record.state} with pid {record.pid}, "
                                    "which is no process of it")
            if record.state not in PROCESS_STATES and record.pid is not None:
                raise Violation(f"{name} is {record.state} but has pid {record.pid}")
            # a STOPPED or FATAL companion has no live process
            if record.state in QUIESCENT_STATES:
                live = [p.pid for p in mine.values() if p.main and p.name == name
                        and p.alive]
                if live:
                    raise Violation(f"{name} is {record.state} while {live} runs")
            # every stop finishes by its deadline plus the SIGKILL path
            if record.state == State.STOPPING and record.stopping is not None and proc:
                due = record.stopping.since + record.stopping.timeout
                if now > due + EPS and not record.killed:
                    raise Violation(f"{name} (pid {record.pid}) still stopping at t={now:.3f}, "
                                    f"its deadline t={due:.3f} passed without SIGKILL")
                if now > due + EPS and proc.alive:
                    raise Violation(f"{name} (pid {record.pid}) outlived its stop deadline")
        for pid, name in sup.pids.items():
            proc = procs.get(pid)
            if proc is None or proc.reaped:
                raise Violation(f"pid {pid} of {name} is tracked but gone")
        for proc in mine.values():
            if proc.main and not proc.reaped and proc.pid not in sup.pids:
                raise Violation(f"{proc.name} pid {proc.pid} runs untracked")
            # what a companion left in its group does not outlive the grace
            if (not proc.main and proc.alive and procs[proc.pgid].died_at is not None
                    and now > procs[proc.pgid].died_at + LEFTOVER_GRACE + 0.01):
                raise Violation(f"{proc.name}'s group member {proc.pid} outlived the "
                                "leftover grace")
        # waiters, timers and buffers stay bounded
        open_requests = sum(1 for r in self.requests if not r.answers)
        waiting = sum(len(w) for w in sup.waiters.values())
        if waiting > open_requests * len(NAMES):
            raise Violation(f"{waiting} waiters for {open_requests} open requests")
        if len(sup.timers) > 2 * len(sup.records) + 65:
            raise Violation(f"timer heap grew to {len(sup.timers)}")


# -- seeds, shrinking, reporting ------------------------------------------------------


def run_one(seed: int, schedule: list[Event] | None = None) -> Simulation:
    sim = Simulation(seed, schedule)
    sim.run()
    return sim


def failure_of(seed: int, schedule: list[Event] | None = None) -> str | None:
    try:
        run_one(seed, schedule)
    except Violation as exc:
        return str(exc)
    except Exception as exc:  # a crash of the supervisor is a failure too
        return f"{type(exc).__name__}: {exc}"
    return None


def shrink(seed: int, schedule: list[Event]) -> list[int]:
    """Indexes of the shortest schedule found that still fails (greedy: drop
    halves, then single events, while the run keeps failing)."""
    keep = list(range(len(schedule)))
    chunk = max(1, len(keep) // 2)
    while chunk >= 1:
        i, shrunk = 0, False
        while i < len(keep):
            trial = keep[:i] + keep[i + chunk:]
            if failure_of(seed, [schedule[j] for j in trial]) is not None:
                keep, shrunk = trial, True
            else:
                i += chunk
        if chunk == 1 and not shrunk:
            break
        chunk = max(1, chunk // 2) if chunk > 1 else (1 if shrunk else 0)
    return keep


def report(seed: int, why: str, out) -> None:
    full = Simulation(seed).schedule
    keep = shrink(seed, full)
    print(f"seed {seed} failed: {why}", file=out)
    sim = Simulation(seed, [full[j] for j in keep])
    try:
        sim.run()
        short = "passes (the fault needs the whole schedule)"
    except Exception as exc:
        short = f"fails: {exc}"
    print(f"  shortest schedule ({len(keep)} of {len(full)} events) {short}", file=out)
    for j in keep:
        print(f"    [{j}] {full[j]}", file=out)
    print("  its last log lines:", file=out)
    for line in list(sim.log.lines)[-15:]:
        print(f"    {line}", file=out)
    print(f"  replay: make simulate SEED={seed} KEEP={','.join(map(str, keep))}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None, help="replay this seed only")
    parser.add_argument("--keep", default="", help="with --seed: only these schedule events")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = range(args.first, args.first + args.seeds)
    failures = 0
    for seed in seeds:
        schedule = None
        if args.keep:
            full = Simulation(seed).schedule
            schedule = [full[int(j)] for j in args.keep.split(",")]
        why = failure_of(seed, schedule)
        if why is not None:
            failures += 1
            if failures <= 3:
                report(seed, why, sys.stdout)
    if failures:
        print(f"({time.monotonic() - started:.1f}s)")
    print(f"simulate: {len(seeds)} seeds, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
