"""The companion manager: one process, one selector loop, no threads, no tick.

Why a wakeup socket and not signalfd or a self-pipe of our own: CPython
already writes each caught signal's number to the fd given to
``signal.set_wakeup_fd`` from its C-level handler, so the loop learns *which*
signals arrived from the bytes it reads, with no Python code running in the
handler and no queue to share with it. signalfd would need every signal
blocked in every thread (and be undone by a library that unblocks), and is
Linux-only. The Python-level handlers are no-ops: the byte is the record.

Timers come from a heap of ``(deadline, seq, name)``; each record's
``deadline`` is the truth, and heap entries that no longer match it are
dropped when they surface (lazy deletion), so nothing is ever cancelled.
"""

from __future__ import annotations

import faulthandler
import gc
import hashlib
import heapq
import itertools
import os
import random
import selectors
import signal
import socket
import time
from collections.abc import Callable

from . import lifecycle as lc
from . import privileges, procfs
from .loading import CompanionConfig, ConfigSources, load_companion_config
from .output import Capture, OutputRouter
from .spawn import spawn_companion
from .spec import CompanionSpec, ConfigError
from .states import PROCESS_STATES, QUIESCENT_STATES, State
from .targets import resolve_all

HANDLED_SIGNALS = (
    signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
)


# What a companion leaves in its process group when its main process exits
# (a pool child it did not wait for, say) gets SIGTERM, and SIGKILL this many
# seconds later if it is still there.
LEFTOVER_GRACE = 2.0

# Default action "ignore" or "continue" (harmless as they are), or not catchable.
_LEFT_AT_DEFAULT = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT, signal.SIGURG})
# faulthandler's, which signal.getsignal reports as SIG_DFL when it was enabled
# after startup (faulthandler.enable() in the app): its traceback must stay.
_FAULTHANDLER_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGFPE, signal.SIGABRT, signal.SIGBUS,
                                   signal.SIGILL})


def stray_signals() -> tuple[int, ...]:
    """Signals the manager ignores: every other one whose action is still the
    default, which would end the manager (or stop it: SIGTSTP) and with it
    every companion, for a signal that means nothing to it (SIGALRM, SIGPROF,
    SIGPWR, SIGIO, a real-time signal, or a SIGSEGV or SIGABRT sent with kill).

    Ignoring the fault signals is safe: for a real fault the kernel resets an
    ignored SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP or SIGSYS to the default
    before delivering it, and abort() does the same for SIGABRT, so a manager
    that really crashes still dies (and is replaced). A handler someone else
    installed stays (faulthandler's, say).
    """
    kept = _LEFT_AT_DEFAULT | (_FAULTHANDLER_SIGNALS if faulthandler.is_enabled() else set())
    return tuple(sig for sig in sorted(signal.valid_signals())
                 if sig not in HANDLED_SIGNALS and sig not in kept
                 and signal.getsignal(sig) == signal.SIG_DFL)


def _record_only(signum, frame):
    """The C handler already wrote ``signum`` to the wakeup socket: nothing to do."""


class Manager:
    """Supervises the companions; driven by signals, timers and the control socket."""

    def __init__(
        self,
        config: CompanionConfig,
        targets: dict[str, Callable[[], object]],
        *,
        log,
        sources: ConfigSources,
        title: Callable[[str], None] = lambda name: None,
        clock: Callable[[], float] = time.monotonic,
        master_pid: int | None = None,
        lock_dir: str | None = None,
        lock_scope: str = "",
        gc_freeze: bool = False,
        memory_check_interval: float = 5.0,
    ):
        self.log = log
        self.master_pid = master_pid
        self.lock_dir = lock_dir
        self.prepare_lock_dir: Callable[[], str] | None = None  # creates it when first needed
        self.lock_scope = lock_scope
        self.gc_freeze = gc_freeze
        self.memory_check_interval = memory_check_interval
        self.next_memory_check: float | None = None
        self.memory: dict[str, int] = {}  # unshared bytes at the last check, by name
        self.captures: dict[int, list[Capture]] = {}  # by pid: its output pipes
        # tail -f clients: [names, newest line sequence sent, responder]
        self.followers: list[list] = []
        self.sources = sources
        self.title = title
        self.clock = clock
        self.config = config
        self.targets = dict(targets)
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
        self.selector = selectors.DefaultSelector()
        self.output = OutputRouter(self.selector, log)
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        # One datagram socket for every companion's ready()/heartbeat(): the
        # companions inherit the sending end (see notify.py).
        self._notify_r, self.notify_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.extra_fds_to_close: list[Callable[[], None]] = []
        self.control = None  # a ControlServer, when companion_control_socket is set
        # control requests waiting for a companion to settle (e.g. `stop`
        # answers once it has stopped): name -> [(settled(record) -> reply | None, respond)]
        self.waiters: dict[str, list[tuple[Callable, Callable[[dict], None]]]] = {}
        self.ignored_signals: tuple[int, ...] = ()  # set by install_signals
        # whom Gunicorn's workers run as (None: companions run as the manager)
        self.base_identity: privileges.Identity | None = None
        self.news = None  # a sdnotify.ManagerNews under systemd's Type=notify

    # -- setup ----------------------------------------------------------------

    def install_signals(self) -> None:
        for sock in (self._wakeup_r, self._wakeup_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, _record_only)
        # Setting SIG_IGN also discards one already pending (blocked since the fork).
        self.ignored_signals = stray_signals()
        for sig in self.ignored_signals:
            signal.signal(sig, signal.SIG_IGN)
        # Restart system calls interrupted by our no-op handlers instead of
        # raising EINTR in the middle of a write to a log file.
        for sig in HANDLED_SIGNALS:
            signal.siginterrupt(sig, False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._on_wakeup)
        for sock in (self._notify_r, self.notify_w):
            sock.setblocking(False)
        self.selector.register(self._notify_r, selectors.EVENT_READ, self._on_notify)

    def close_in_child(self) -> None:
        """What a freshly forked companion must not keep of the manager."""
        self.selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
        self._notify_r.close()  # the sending end stays: it is the companion's channel
        self.output.close_in_child()
        for captures in self.captures.values():
            for capture in captures:
                if not capture.closed:
                    os.close(capture.fd)
        for close in self.extra_fds_to_close:
            close()

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        for name, record in list(self.records.items()):
            if record.spec.autostart:
                self.apply(name, lc.Start())
        self._schedule_memory_check()
        while not (self.shutting_down and self._all_quiescent() and not self.leftovers):
            timeout = self._next_timeout()
            for key, mask in self.selector.select(timeout):
                key.data(key, mask)
            self._fire_timers()
            if self.strays_pending:
                self.strays_pending = False
                self._kill_strays()
            if self.news is not None:
                self.news.after_loop_turn([(r.name, str(r.state), r.wanted)
                                           for r in self.records.values()])
        if self.control is not None:
            self.control.close()
        self._kill_session()
        self.output.close()
        self.log.info("Companion manager exiting (pid: %s)", os.getpid())
        return 0

    def _all_quiescent(self) -> bool:
        return not self.pids and all(
            r.state in QUIESCENT_STATES for r in self.records.values()
        )

    def _next_timeout(self) -> float | None:
        nearest = self.next_memory_check
        if self.news is not None and self.news.next_keepalive is not None:
            nearest = self.news.next_keepalive if nearest is None else min(
                nearest, self.news.next_keepalive)
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
        if nearest is None:
            return None
        return max(0.0, nearest - self.clock())

    def _fire_timers(self) -> None:
        now = self.clock()
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

    def _on_wakeup(self, key, mask) -> None:
        try:
            data = self._wakeup_r.recv(4096)
        except BlockingIOError:
            return
        # Several SIGCHLDs may arrive as several bytes: reaping once handles them all.
        for signum in dict.fromkeys(data):
            self.handle_signal(signum)

    def _on_notify(self, key, mask) -> None:
        while True:
            try:
                data = self._notify_r.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            what, _, pid = data.decode("ascii", "replace").partition(" ")
            name = self.pids.get(int(pid)) if pid.isdigit() else None
            if name is not None and what in ("ready", "heartbeat", "lock-wait", "lock-held"):
                self.apply(name, lc.Notified(what))

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGUSR2 and self.master_pid and os.getppid() != self.master_pid:
            # our PDEATHSIG: the master is gone, and with it whoever would
            # clean up after us. Take every companion down now.
            self.log.error("Gunicorn master (pid %s) died; stopping every companion",
                           self.master_pid)
            self.shutdown(quick=True)
        elif signum == signal.SIGCHLD:
            self.reap()
        elif signum == signal.SIGTERM:
            self.shutdown(quick=False)
        elif signum in (signal.SIGINT, signal.SIGQUIT):
            self.shutdown(quick=True)
            for pgid, (name, _) in list(self.leftovers.items()):
                self._kill_leftovers(pgid, name)
        elif signum == signal.SIGHUP:
            if self.news is not None:
                self.news.expect_settle()  # systemd waits for READY=1 again
            self.reread()
        elif signum == signal.SIGUSR1:
            # Gunicorn's "reopen log files", forwarded by the master: for
            # logrotate's move-and-signal
            try:
                # the manager's own (Gunicorn) log, moved too. First: with
                # capture_output it points our stdout and stderr at the new file.
                self.log.reopen_files()
            except OSError as exc:
                self.log.error("Cannot reopen the companion manager's log: %s", exc)
            self.output.reopen()  # never raises: a failing file logs and drops lines
            self.log.info("Companion log files reopened")
        # USR1/USR2/TTIN/TTOU/WINCH are the master's business: we only make
        # sure their default action (some terminate) cannot kill the manager.

    # -- the state machine's shell ------------------------------------------------

    def apply(self, name: str, event: lc.Event) -> None:
        """Step one record and carry out what the state machine asks for."""
        before = self.records[name]
        record, actions = lc.step(before, event, self.clock())
        self.records[name] = record
        if record.deadline is not None and record.deadline != before.deadline:
            heapq.heappush(self.timers, (record.deadline, next(self._seq), name))
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
                respond({"ok": False, "error": f"{name} was removed from the configuration"})
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

    def lock_path(self, spec: CompanionSpec) -> str | None:
        """Where a singleton's lock lives: one file per companion and config,
        so the old and the new master of a hot upgrade share it."""
        if not spec.singleton:
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
        self.output.owner_of = self._owner_of

    def identity_of(self, spec: CompanionSpec) -> privileges.Identity | None:
        if self.base_identity is None:
            return None
        return privileges.of_spec(spec, self.base_identity)

    def _owner_of(self, spec: CompanionSpec) -> tuple[int, int]:
        identity = self.identity_of(spec)
        return identity.uid, identity.gid

    def _spawn(self, name: str) -> None:
        spec = self.records[name].spec
        if self.gc_freeze:
            # objects created since the last fork join the permanent generation:
            # collections in the companion then leave their pages shared
            gc.freeze()
        pipes = []
        try:
            pipes = self.output.pipes_for(spec)
            # the child must not keep the read ends: close_in_child closes them
            self.captures[-1] = [Capture(name, stream, read_fd, dest, self.output.ring(name), None)
                                 for stream, read_fd, _, dest in pipes]
            pid = spawn_companion(
                spec,
                self.targets.get(name),
                # an ignored signal stays ignored across fork and exec: the
                # companion starts from the defaults, not the manager's choices
                handled_signals=HANDLED_SIGNALS + self.ignored_signals,
                close_in_child=self.close_in_child,
                title=self.title,
                notify_fd=self.notify_w.fileno(),
                lock_path=self.lock_path(spec),
                stdout_fd=pipes[0][2],
                stderr_fd=pipes[1][2] if len(pipes) > 1 else None,
                identity=self.identity_of(spec),
            )
        except OSError as exc:
            for capture in self.captures.pop(-1, []):
                capture.finish()
                self.output.release(capture.destination)
            for _, _, write_fd, _ in pipes:
                os.close(write_fd)
            self.apply(name, lc.SpawnFailed(f"{exc.strerror or exc}"
                                            + (f": {exc.filename!r}" if exc.filename else "")))
            return
        captures = self.captures.pop(-1)
        for (_, _, write_fd, _), capture in zip(pipes, captures, strict=True):
            os.close(write_fd)  # only the companion writes: EOF when it is gone
            if spec.timestamps:
                capture.timestamp_format = spec.timestamp_format
            self.output.watch(capture, lambda key, mask, c=capture, p=pid: self._on_output(c, p))
        self.captures[pid] = captures
        self.pids[pid] = name
        self.apply(name, lc.Spawned(pid, jitter=random.random()))

    def _kill(self, action: lc.Kill) -> None:
        # The companion leads its own process group (its pgid is its pid), so
        # ``group`` reaches everything it started that stayed in it.
        try:
            if action.group:
                try:
                    os.killpg(action.pid, action.signal)
                except ProcessLookupError:
                    os.kill(action.pid, action.signal)  # not a group leader yet
            else:
                os.kill(action.pid, action.signal)
        except ProcessLookupError:
            pass  # already exited; its SIGCHLD is on the way
        except PermissionError as exc:
            self.log.error("Cannot signal companion %r (pid %s): %s", action.name, action.pid, exc)

    def _leftovers_get_sigterm(self, pgid: int, name: str) -> None:
        """The companion's main process is gone: what it left in its group
        must not outlive it, but gets the chance to finish as a stopped
        process would. Right after the reap the group's number cannot name
        anyone else's group: it stays taken while any member lives."""
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return  # nothing left: the usual case
        if not procfs.group_members(pgid, os.getsid(0)):
            return  # only zombies (killpg counts them), or members already SIGKILLed
        self.log.info("Companion %r (pid %s) left processes in its group; sent them SIGTERM",
                      name, pgid)
        self.leftovers[pgid] = (name, self.clock() + LEFTOVER_GRACE)

    def _kill_leftovers(self, pgid: int, name: str) -> None:
        del self.leftovers[pgid]
        if pgid in self.pids:
            return  # the number now names a new companion of ours: the old group was empty
        # Members by /proc, within our session, not killpg: once the old
        # group emptied, another process may have made a group of that number.
        members = procfs.group_members(pgid, os.getsid(0))
        if members:
            self.log.warning("%d process(es) left behind by companion %r did not exit "
                             "%gs after SIGTERM; sending SIGKILL", len(members), name,
                             LEFTOVER_GRACE)
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _forget_empty_leftover_groups(self) -> None:
        for pgid in list(self.leftovers):
            if pgid in self.pids or not procfs.group_members(pgid, os.getsid(0)):
                del self.leftovers[pgid]

    def _on_output(self, capture: Capture, pid: int) -> None:
        # An event from this select() batch may be for a pipe an earlier
        # callback of the same batch has already closed (the reap drains).
        if capture.closed:
            return
        if not capture.read():
            self._close_capture(capture, pid)
        self._feed_followers()

    def follow(self, names: list[str], responder) -> None:
        """Send these companions' new lines to a tail -f client until it leaves."""
        _, newest = self.output.since(names, -1)
        self.followers.append([names, newest, responder])

    def _feed_followers(self) -> None:
        if not self.followers:
            return
        still = []
        for follower in self.followers:
            names, after, responder = follower
            if responder.closed:
                continue
            lines, follower[1] = self.output.since(names, after)
            if lines:
                responder.push({"ok": True, "lines": lines})
            still.append(follower)
        self.followers = still

    def _close_capture(self, capture: Capture, pid: int) -> None:
        """EOF: every writer is gone. Flush a last partial line and let go."""
        self.output.unwatch(capture)
        capture.finish()
        self.output.release(capture.destination)
        remaining = [c for c in self.captures.get(pid, []) if c is not capture]
        if remaining:
            self.captures[pid] = remaining
        else:
            self.captures.pop(pid, None)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            name = self.pids.pop(pid, None)
            if name is None:
                # an orphaned descendant reparented to us (we are its
                # subreaper), maybe the last of a group left behind
                if self.leftovers:
                    self._forget_empty_leftover_groups()
                continue
            self._leftovers_get_sigterm(pid, name)
            self.memory.pop(name, None)
            # its last words reach the file before the exit is handled (and
            # before a restart could interleave a new process's lines); a held
            # back destination keeps them in its buffer, ahead of the restart's
            for capture in list(self.captures.get(pid, [])):
                if not capture.drain():
                    self._close_capture(capture, pid)
            self._feed_followers()
            self.apply(name, lc.Exited(lc.ExitStatus.from_wait_status(status),
                                       jitter=random.random()))
            # swept after this loop turn's respawns: scanning /proc costs
            # milliseconds that a restart should not wait for
            self.strays_pending = True

    def _kill_strays(self) -> None:
        """SIGKILL descendants that left their companion's process group and
        were orphaned to us (a daemonizing grandchild, say)."""
        me = os.getpid()
        for pid in procfs.children_of(me):
            if pid in self.pids:
                continue
            try:
                if os.getpgid(pid) in self.leftovers:
                    continue  # left in its companion's group: it has its grace
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _kill_session(self) -> None:
        """On the way out: nothing of our tree may outlive us. The manager
        leads its own session, which every descendant stays in unless it
        starts a session of its own."""
        me = os.getpid()
        if os.getsid(0) != me:
            return self._kill_strays()
        for pid in procfs.session_members(me):
            if pid != me:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- memory recycling ----------------------------------------------------------

    def _schedule_memory_check(self) -> None:
        watched = any(r.spec.max_memory for r in self.records.values())
        self.next_memory_check = (self.clock() + self.memory_check_interval) if watched else None

    def _check_memory(self) -> None:
        """Restart a companion whose unshared memory passed max_memory.

        Unshared (private) memory, not resident: a companion's resident size
        counts every preloaded page it merely shares with the master, which
        says nothing about a leak; what it has written and so copied is what
        grows when it leaks.
        """
        watched = {r.pid: r for r in self.records.values()
                   if r.spec.max_memory and r.pid and r.state == State.RUNNING}
        groups = procfs.process_groups(watched) if watched else {}
        for pgid, record in watched.items():
            used = sum(procfs.private_bytes(pid) for pid in groups.get(pgid, [pgid]))
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
            config = load_companion_config(self.sources)
            # a companion still stopping for an earlier change compares as the
            # spec it is about to run, not the one it is leaving
            current = {n: r.next_spec or r.spec for n, r in self.records.items()
                       if n not in self.retiring}
            fresh = config.by_name()
            if self.base_identity is not None and (
                    problems := privileges.faults(config.specs, self.base_identity)):
                raise ConfigError(problems)
            to_resolve = tuple(s for n, s in fresh.items() if current.get(n) != s)
            targets = resolve_all(to_resolve)
            if self.lock_dir is None and self.prepare_lock_dir and any(
                    s.singleton for s in config.specs):
                self.lock_dir = self.prepare_lock_dir()
        except ConfigError as exc:
            self.log.error("Companion config not applied, keeping the running one: %s", exc)
            return False, str(exc), {}
        changes = diff_specs(current, fresh)
        self.config = config
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
        now = self.clock()
        entries = []
        stopping = [r.pid for r in self.records.values() if r.state == State.STOPPING and r.pid]
        # one scan of /proc, and only while something is stopping
        groups = procfs.process_groups(stopping) if stopping else {}
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
                entry["singleton"] = True
            if spec.stop_as_group:
                entry["stop_as_group"] = True
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

