"""The supervisor: the companions' records, and the shell around the pure
state machine (lifecycle.step) that carries out its actions through the host.

It knows no socket, no selector and no signal handler: the loop (loop.py)
turns those into calls here, and the deterministic simulation
(tests/simulation.py) makes the same calls against a simulated host. All it
asks of the operating system goes through ``self.host`` (host.py).

Timers come from a heap of ``(deadline, seq, name)``; each record's
``deadline`` is the truth, and heap entries that no longer match it are
dropped when they surface (lazy deletion), so nothing is ever cancelled.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import signal
from collections.abc import Callable

from . import lifecycle as lc
from . import privileges, protocol
from .host import Host
from .loading import CompanionConfig
from .spec import CompanionSpec, ConfigError
from .states import PROCESS_STATES, QUIESCENT_STATES, State

# What a companion leaves in its process group when its main process exits
# (a pool child it did not wait for, say) gets SIGTERM, and SIGKILL this many
# seconds later if it is still there.
LEFTOVER_GRACE = 2.0

# The timer heap is rebuilt from the records once stale entries outnumber the
# live ones by this much (a companion heartbeating every few milliseconds
# would otherwise grow it for as long as its watchdog_timeout).
_STALE_TIMERS_SLACK = 64


class Supervisor:
    """Supervises the companions; driven by the loop's calls."""

    def __init__(
        self,
        config: CompanionConfig,
        targets: dict[str, Callable[[], object]],
        *,
        host: Host,
        log,
        load_config: Callable[[], CompanionConfig],
        resolve: Callable[[tuple[CompanionSpec, ...]], dict[str, Callable]],
        master_pid: int | None = None,
        lock_dir: str | None = None,
        prepare_lock_dir: Callable[[], str] | None = None,
        lock_scope: str = "",
        memory_check_interval: float = 5.0,
        base_identity: privileges.Identity | None = None,
    ):
        self.host = host
        self.log = log
        self.load_config = load_config
        self.resolve = resolve
        self.master_pid = master_pid
        self.lock_dir = lock_dir
        self.prepare_lock_dir = prepare_lock_dir  # creates it when first needed
        self.lock_scope = lock_scope
        self.memory_check_interval = memory_check_interval
        self.next_memory_check: float | None = None
        self.memory: dict[str, int] = {}  # unshared bytes at the last check, by name
        self.targets = dict(targets)
        # fixed for the manager's life: the keeper was started with them
        self.lease_settings = (config.lease_url, config.lease_ttl)
        self.records: dict[str, lc.Record] = {
            spec.name: lc.Record(spec) for spec in config.specs
        }
        self.pids: dict[int, str] = {}
        self.retiring: set[str] = set()  # removed by a reread; dropped once stopped
        self.timers: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self.shutting_down = False
        self.strays_pending = False
        # process groups of exited companions that still had members: pgid ->
        # (companion name, when they get SIGKILL)
        self.leftovers: dict[int, tuple[str, float]] = {}
        # control requests waiting for a companion to settle (e.g. `stop`
        # answers once it has stopped): name -> [(settled(record) -> reply | None, respond)]
        self.waiters: dict[str, list[tuple[Callable, Callable[[dict], None]]]] = {}
        # whom Gunicorn's workers run as (None: companions run as the manager)
        self.base_identity: privileges.Identity | None = None
        # fleet singletons' leases (fleet.py); None without companion_lease_url
        self.fleet = None
        if base_identity is not None:
            self.use_identity(base_identity)

    @property
    def output(self):
        """The host's output sinks: tail, dropped counts (commands.py reads them)."""
        return self.host.output

    # -- what the loop drives -----------------------------------------------------

    def start(self) -> None:
        """Boot: start what autostarts, arm the memory check."""
        for name, record in list(self.records.items()):
            if record.spec.autostart:
                self.apply(name, lc.Start())
        self._schedule_memory_check()

    def finished(self) -> bool:
        """Shut down, and nothing of ours is left to wait for."""
        return self.shutting_down and self._all_quiescent() and not self.leftovers

    def _all_quiescent(self) -> bool:
        return not self.pids and all(
            r.state in QUIESCENT_STATES for r in self.records.values()
        )

    def next_deadline(self) -> float | None:
        """The earliest time ``fire_due`` has something to do (None: nothing)."""
        nearest = self.next_memory_check
        if self.fleet is not None:
            leases = self.fleet.next_deadline()
            if leases is not None:
                nearest = leases if nearest is None else min(nearest, leases)
        for _, kill_at in self.leftovers.values():
            nearest = kill_at if nearest is None else min(nearest, kill_at)
        while self.timers:
            deadline, _, name = self.timers[0]
            record = self.records.get(name)
            if record is None or record.deadline != deadline:
                heapq.heappop(self.timers)  # stale: the record moved on
                continue
            nearest = deadline if nearest is None else min(nearest, deadline)
            break
        return nearest

    def fire_due(self) -> None:
        """Everything whose time has come; then the stray sweep an exit asked for."""
        now = self.host.now()
        if self.fleet is not None:
            self.fleet.check(now)
        if self.next_memory_check is not None and now >= self.next_memory_check:
            self._check_memory()
        for pgid, (name, kill_at) in list(self.leftovers.items()):
            if now >= kill_at:
                self._kill_leftovers(pgid, name)
        while self.timers and self.timers[0][0] <= now:
            deadline, _, name = heapq.heappop(self.timers)
            record = self.records.get(name)
            if record is not None and record.deadline == deadline:
                self.apply(name, lc.Tick())
        if self.strays_pending:
            # swept after this loop turn's respawns: scanning /proc costs
            # milliseconds that a restart should not wait for
            self.strays_pending = False
            self.kill_strays()

    def notified(self, pid: int, what: str) -> None:
        """A companion's ready()/heartbeat()/lock news over the notify channel."""
        name = self.pids.get(pid)
        if name is not None and what in ("ready", "heartbeat", "lock-wait", "lock-held"):
            self.apply(name, lc.Notified(what))

    # -- the state machine's shell ------------------------------------------------

    def apply(self, name: str, event: lc.Event) -> None:
        """Step one record and carry out what the state machine asks for."""
        before = self.records[name]
        record, actions = lc.step(before, event, self.host.now())
        self.records[name] = record
        if record.deadline is not None and record.deadline != before.deadline:
            self._push_timer(record.deadline, name)
        for action in actions:
            if isinstance(action, lc.Log):
                self.log.log(action.level, "%s", action.message)
            elif isinstance(action, lc.Kill):
                self._kill(action)
            elif isinstance(action, lc.Spawn):
                self._spawn(action.name)
        self._settle_waiters(name)  # before a retired record goes: a pending stop sees it stopped
        if name in self.retiring and self.records[name].state in QUIESCENT_STATES:
            del self.records[name]
            self.retiring.discard(name)
            self.targets.pop(name, None)
            self._settle_waiters(name)
        if self.fleet is not None:
            self.fleet.sync(name)

    def _push_timer(self, deadline: float, name: str) -> None:
        if len(self.timers) > 2 * len(self.records) + _STALE_TIMERS_SLACK:
            self.timers = [(r.deadline, next(self._seq), n) for n, r in self.records.items()
                           if r.deadline is not None]
            heapq.heapify(self.timers)
        heapq.heappush(self.timers, (deadline, next(self._seq), name))

    def wait_for(self, name: str, settled: Callable, respond: Callable[[dict], None]) -> None:
        """Call ``respond(settled(record))`` once that is not None."""
        self.waiters.setdefault(name, []).append((settled, respond))

    def _settle_waiters(self, name: str) -> None:
        # Take the list out first: answering one waiter may run the next
        # request of its connection, which steps this record again (and may
        # add waiters) before this loop is done.
        waiting = self.waiters.pop(name, None)
        if not waiting:
            return
        still = []
        for settled, respond in waiting:
            record = self.records.get(name)
            if record is None:
                respond(protocol.error("removed", f"{name} was removed from the configuration"))
                continue
            reply = settled(record)
            if reply is None:
                still.append((settled, respond))
            else:
                respond(reply)
        if still:
            self.waiters[name] = still + self.waiters.get(name, [])

    _REQUESTS = {"start": lc.Start, "stop": lc.Stop, "restart": lc.Restart}

    def request(self, name: str, kind: str) -> None:
        """A control request for one companion: start, stop or restart."""
        self.log.info("Control request: %s %s", kind, name)
        self.apply(name, self._REQUESTS[kind]())

    def follow(self, names: list[str], responder) -> None:
        """tail -f: the host sends these companions' new lines as they come."""
        self.host.follow(names, responder)

    # -- spawning -------------------------------------------------------------------

    def lock_path(self, spec: CompanionSpec) -> str | None:
        """Where a singleton's lock lives: one file per companion and config,
        so the old and the new master of a hot upgrade share it."""
        if not spec.host_singleton:
            return None
        if self.lock_dir is None:
            # never run a singleton without its lock: no directory, no start
            if self.prepare_lock_dir is None:
                raise OSError(f"no companion_lock_dir for singleton {spec.name!r}")
            try:
                self.lock_dir = self.prepare_lock_dir()
            except ConfigError as exc:
                raise OSError(str(exc)) from None
        scope = hashlib.sha256(self.lock_scope.encode()).hexdigest()[:12]
        return os.path.join(self.lock_dir, f"{scope}-{spec.name}.lock")

    def use_identity(self, base: privileges.Identity) -> None:
        """Companions run as ``base`` (Gunicorn's user) unless they set their own."""
        self.base_identity = base
        self.host.output.owner_of = self._owner_of

    def identity_of(self, spec: CompanionSpec) -> privileges.Identity | None:
        if self.base_identity is None:
            return None
        return privileges.of_spec(spec, self.base_identity)

    def _owner_of(self, spec: CompanionSpec) -> tuple[int, int]:
        identity = self.identity_of(spec)
        return identity.uid, identity.gid

    def _spawn(self, name: str) -> None:
        spec = self.records[name].spec
        try:
            token = self.fleet.token_of(name) if spec.fleet and self.fleet else None
            if spec.fleet and token is None:
                raise OSError(f"no fleet lease for {name!r}")  # cannot happen: leased
            pid = self.host.spawn(spec, self.targets.get(name), lock_path=self.lock_path(spec),
                                  identity=self.identity_of(spec), fencing_token=token)
        except OSError as exc:
            self.apply(name, lc.SpawnFailed(f"{exc.strerror or exc}"
                                            + (f": {exc.filename!r}" if exc.filename else "")))
            return
        self.pids[pid] = name
        self.apply(name, lc.Spawned(pid, jitter=self.host.random()))

    # -- signalling -----------------------------------------------------------------

    def _kill(self, action: lc.Kill) -> None:
        # The companion leads its own process group (its pgid is its pid), so
        # ``group`` reaches everything it started that stayed in it.
        host = self.host
        try:
            if action.group:
                if not host.signal_group(action.pid, action.signal):
                    host.signal_process(action.pid, action.signal)  # not a group leader yet
            else:
                host.signal_process(action.pid, action.signal)
            # gone already: its exit is on the way
        except PermissionError as exc:
            self.log.error("Cannot signal companion %r (pid %s): %s", action.name, action.pid, exc)

    def _leftovers_get_sigterm(self, pgid: int, name: str) -> None:
        """The companion's main process is gone: what it left in its group
        must not outlive it, but gets the chance to finish as a stopped
        process would. Right after the reap the group's number cannot name
        anyone else's group: it stays taken while any member lives."""
        try:
            if not self.host.signal_group(pgid, signal.SIGTERM):
                return  # nothing left: the usual case
        except PermissionError:
            return
        if not self.host.group_members(pgid):
            return  # only zombies (killpg counts them), or members already SIGKILLed
        self.log.info("Companion %r (pid %s) left processes in its group; sent them SIGTERM",
                      name, pgid)
        self.leftovers[pgid] = (name, self.host.now() + LEFTOVER_GRACE)

    def kill_leftovers_now(self) -> None:
        """A quick shutdown: what companions left behind gets no grace either."""
        for pgid, (name, _) in list(self.leftovers.items()):
            self._kill_leftovers(pgid, name)

    def _kill_leftovers(self, pgid: int, name: str) -> None:
        del self.leftovers[pgid]
        if pgid in self.pids:
            return  # the number now names a new companion of ours: the old group was empty
        # Members by /proc, within our session, not killpg: once the old
        # group emptied, another process may have made a group of that number.
        members = self.host.group_members(pgid)
        if members:
            self.log.warning("%d process(es) left behind by companion %r did not exit "
                             "%gs after SIGTERM; sending SIGKILL", len(members), name,
                             LEFTOVER_GRACE)
        for pid in members:
            self.host.signal_process(pid, signal.SIGKILL)

    def _forget_empty_leftover_groups(self) -> None:
        for pgid in list(self.leftovers):
            if pgid in self.pids or not self.host.group_members(pgid):
                del self.leftovers[pgid]

    def reap(self) -> None:
        """SIGCHLD: handle every exit the host reports."""
        for pid, status in self.host.reap():
            name = self.pids.pop(pid, None)
            if name is None:
                # an orphaned descendant reparented to us (we are its
                # subreaper), maybe the last of a group left behind
                if self.leftovers:
                    self._forget_empty_leftover_groups()
                continue
            self._leftovers_get_sigterm(pid, name)
            self.memory.pop(name, None)
            self.host.exited(pid)
            self.apply(name, lc.Exited(lc.ExitStatus.from_wait_status(status),
                                       jitter=self.host.random()))
            self.strays_pending = True

    def kill_strays(self) -> None:
        """SIGKILL descendants that left their companion's process group and
        were orphaned to us (a daemonizing grandchild, say)."""
        keeper = self.fleet.link.pid if self.fleet is not None else None
        for pid, pgid in self.host.children():
            if pid in self.pids or pgid in self.leftovers or pid == keeper:
                continue  # ours, or left in its companion's group: it has its grace
            self.host.signal_process(pid, signal.SIGKILL)

    def finish(self) -> None:
        """On the way out: nothing of our tree may outlive us. The manager
        leads its own session, which every descendant stays in unless it
        starts a session of its own."""
        if self.fleet is not None:
            self.fleet.close()  # releases what is still held, before the keeper is killed
        if not self.host.kill_session():
            self.kill_strays()

    # -- memory recycling ----------------------------------------------------------

    def _schedule_memory_check(self) -> None:
        # the spec a companion restarts into counts too: a reread that sets
        # max_memory on a running companion must arm the check it will need
        watched = any((r.next_spec or r.spec).max_memory for r in self.records.values())
        self.next_memory_check = (self.host.now() + self.memory_check_interval
                                  if watched else None)

    def _check_memory(self) -> None:
        """Restart a companion whose unshared memory passed max_memory.

        Unshared (private) memory, not resident: a companion's resident size
        counts every preloaded page it merely shares with the master, which
        says nothing about a leak; what it has written and so copied is what
        grows when it leaks.
        """
        watched = {r.pid: r for r in self.records.values()
                   if r.spec.max_memory and r.pid and r.state == State.RUNNING}
        groups = self.host.process_groups(watched) if watched else {}
        for pgid, record in watched.items():
            used = sum(self.host.private_bytes(pid) for pid in groups.get(pgid, [pgid]))
            self.memory[record.name] = used
            if used > record.spec.max_memory:
                self.apply(record.name, lc.Recycle(
                    f"max_memory exceeded ({used / 2**20:.1f} MiB unshared > "
                    f"{record.spec.max_memory / 2**20:.1f} MiB)"))
        self._schedule_memory_check()

    # -- requests -----------------------------------------------------------------

    def shutdown(self, quick: bool) -> None:
        if not self.shutting_down:
            self.log.info("Companion manager stopping companions (%s)",
                          "quick" if quick else "graceful")
        self.shutting_down = True
        for name in list(self.records):
            self.apply(name, lc.Stop(quick=quick))

    def reread(self) -> tuple[bool, str, dict]:
        """Apply a fresh read of the config: start added companions, stop removed
        ones, restart changed ones, leave the rest alone. All or nothing."""
        if self.shutting_down:
            return False, "the companion manager is shutting down", {}
        try:
            config = self.load_config()
            # a companion still stopping for an earlier change compares as the
            # spec it is about to run, not the one it is leaving
            current = {n: r.next_spec or r.spec for n, r in self.records.items()
                       if n not in self.retiring}
            fresh = config.by_name()
            # fixed for the keeper's life; but dropping the URL with the last
            # fleet singleton is a removal like any other
            dropped = config.lease_url is None and not any(s.fleet for s in config.specs)
            if (config.lease_url, config.lease_ttl) != self.lease_settings and not dropped:
                raise ConfigError("companion_lease_url and companion_lease_ttl cannot change "
                                  "on a reread; restart Gunicorn to apply them")
            if self.base_identity is not None and (
                    problems := privileges.faults(config.specs, self.base_identity)):
                raise ConfigError(problems)
            targets = self.resolve(tuple(s for n, s in fresh.items() if current.get(n) != s))
            if self.lock_dir is None and self.prepare_lock_dir and any(
                    s.host_singleton for s in config.specs):
                self.lock_dir = self.prepare_lock_dir()
        except ConfigError as exc:
            self.log.error("Companion config not applied, keeping the running one: %s", exc)
            return False, str(exc), {}
        changes = diff_specs(current, fresh)
        self.targets.update(targets)
        for name in changes["removed"]:
            self.retiring.add(name)
            self.apply(name, lc.Stop())
        for name in changes["changed"]:
            self.apply(name, lc.Reconfigure(fresh[name]))
        for name in changes["added"]:
            self.retiring.discard(name)
            if name in self.records:  # re-added while still stopping: keep its record
                self.apply(name, lc.Reconfigure(fresh[name]))
                self.apply(name, lc.Start())
                continue
            self.records[name] = lc.Record(fresh[name])
            if fresh[name].autostart:
                self.apply(name, lc.Start())
        # keep the configured order for status
        order = list(fresh) + [n for n in self.records if n not in fresh]
        self.records = {n: self.records[n] for n in order if n in self.records}
        self._schedule_memory_check()
        summary = ", ".join(f"{k}: {', '.join(v)}" for k, v in changes.items()
                            if v and k != "unchanged")
        self.log.info("Companion config reread: %s", summary or "no changes")
        return True, summary or "no changes", changes

    def snapshot(self) -> list[dict]:
        """What ``status`` shows: one entry per companion.

        Every entry has name, state, pid, uptime, restarts, last_exit, stdout,
        stderr, stop_timeout, reload_timeout and its target or command; the
        other fields appear only when they say something (a status of 500
        companions stays small and fast).
        """
        now = self.host.now()
        entries = []
        stopping = [r.pid for r in self.records.values() if r.state == State.STOPPING and r.pid]
        # one scan of /proc, and only while something is stopping
        groups = self.host.process_groups(stopping) if stopping else {}
        for record in self.records.values():
            spec = record.spec
            running = record.state in PROCESS_STATES and record.started_at is not None
            entry = {
                "name": record.name,
                "state": str(record.state),
                "pid": record.pid,
                "uptime": round(now - record.started_at, 3) if running and record.pid else None,
                "restarts": record.restarts,
                "last_exit": record.last_exit.as_json() if record.last_exit else None,
                "stdout": spec.stdout,
                "stderr": spec.stderr,
                "stop_timeout": spec.stop_timeout,
                "reload_timeout": spec.reload_timeout,
            }
            if spec.command:
                entry["command"] = list(spec.command)
            else:
                entry["target"] = spec.target
            if spec.group:
                entry["group"] = spec.group
            if not record.wanted:
                entry["wanted"] = False  # stopped by hand, or not autostarted
            if spec.singleton:
                entry["singleton"] = spec.singleton
            if spec.stop_as_group:
                entry["stop_as_group"] = True
            if spec.fleet and self.fleet is not None:
                entry["lease"] = self.fleet.status(record.name, now)
            if record.stopping is not None and record.state == State.STOPPING:
                # a hung stop explains itself before its timeout runs out
                entry["stopping"] = {
                    "seconds": round(now - record.stopping.since, 3),
                    "signal": lc.signal_name(record.stopping.signal),
                    "timeout": record.stopping.timeout,
                    "group_left": len(groups.get(record.pid, ())),
                }
            for key, value in (("waiting", record.waiting),
                               ("memory", self.memory.get(record.name)),
                               ("last_recycle", record.last_recycle)):
                if value is not None:
                    entry[key] = value
            if record.state == State.BACKOFF and record.down_since is not None:
                entry["backoff"] = {  # for `check`: how long it has been failing
                    "seconds": round(now - record.down_since, 3),
                    "failures": record.failures,
                    "retry_in": round(max(0.0, (record.deadline or now) - now), 3),
                }
            if self.output.dropped[record.name]:  # output lines lost, since boot
                entry["output_dropped"] = self.output.dropped[record.name]
            entries.append(entry)
        return entries


def diff_specs(
    current: dict[str, CompanionSpec], fresh: dict[str, CompanionSpec]
) -> dict[str, list[str]]:
    """Names added, removed, changed and unchanged between two configs (pure)."""
    return {
        "added": [n for n in fresh if n not in current],
        "removed": [n for n in current if n not in fresh],
        "changed": [n for n in fresh if n in current and current[n] != fresh[n]],
        "unchanged": [n for n in fresh if n in current and current[n] == fresh[n]],
    }
