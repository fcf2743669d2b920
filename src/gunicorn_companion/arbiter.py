"""The master's side: Gunicorn's Arbiter, plus one extra child, the manager.

The arbiter watches only the manager; the manager watches the companions.
Between the two runs the *lifeline*: a pipe whose write end the manager and
every companion hold (they inherit it through fork) and whose read end the
master keeps. The manager writes its boot result on it; after that, EOF on
the read end means every process of that manager's tree has exited, because
the kernel closes a process's files when it exits. A replacement manager is
started only after that EOF, so two instances of one companion never run at
once, whatever order the kernel reaps things in.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import sys
import tempfile
import time

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from . import privileges, procfs, safefs
from .commands import dispatch
from .lifecycle import ExitStatus
from .loading import CompanionConfig, ConfigSources, load_companion_config
from .manager import Manager
from .server import ControlServer, ControlSocketError
from .spawn import (
    EXIT_ORPHANED,
    become_subreaper,
    fork_blocking_signals,
    reset_signals,
    set_parent_death_signal,
    unblock_signals,
)
from .spec import ConfigError
from .targets import resolve_all

READY = b"ready\n"
ERROR_PREFIX = b"error "

# Respawn backoff for a manager that keeps crashing: it never loops tightly.
RESPAWN_DELAY_MIN = 0.5
RESPAWN_DELAY_MAX = 30.0
# A manager that lived this long was healthy: its crash restarts the backoff.
HEALTHY_UPTIME = 10.0
# How long the master waits for a freshly forked manager to report its boot.
BOOT_TIMEOUT = 60.0


def respawn_delay(crashes_in_a_row: int) -> float:
    """Seconds before a dead manager is replaced: the minimum, doubled for each
    crash in a row after the first, up to the maximum (pure)."""
    return min(RESPAWN_DELAY_MIN * 2 ** max(crashes_in_a_row - 1, 0), RESPAWN_DELAY_MAX)


def _wait_readable(fd: int, timeout: float) -> bool:
    try:
        return bool(select.select([fd], [], [], max(0.0, timeout))[0])
    except InterruptedError:
        return False


# -- HTTP workers die with their master ----------------------------------------------
#
# Gunicorn's workers notice a dead master only on their next loop turn (the
# sync worker: up to timeout/2 seconds), holding the listening socket until
# then: a supervisor restarting the server (systemd Restart=always, a
# container restart) cannot bind it meanwhile. So each HTTP worker asks for
# PDEATHSIG. Gunicorn 23..27 have no hook in the child before the worker runs
# that is not the user's (post_fork), so an at-fork hook does it, armed only
# while our spawn_worker runs: other forks of the master (the manager, the
# re-exec of a hot upgrade, whose new master must outlive the old one) and
# forks made later by a worker itself are left alone.

# The master's pid while Gunicorn's spawn_worker forks an HTTP worker, else None.
_forking_http_worker_of: int | None = None


def _http_worker_after_fork() -> None:
    """The first thing any child of this process runs (os.register_at_fork)."""
    global _forking_http_worker_of
    master_pid, _forking_http_worker_of = _forking_http_worker_of, None  # disarm for its forks
    if master_pid is None:
        return
    # SIGKILL, not SIGTERM: the master was killed, so nobody enforces a
    # graceful_timeout any more, and the point is to free the port at once.
    # A graceful worker would finish its requests first, holding the socket
    # for as long as the slowest one takes (gthread: many). Requests in flight
    # are cut, as the master's own death already cut the server's.
    # Then re-check: the master may have died before prctl, and then no signal
    # will ever come.
    if set_parent_death_signal(signal.SIGKILL) and os.getppid() != master_pid:
        os._exit(EXIT_ORPHANED)


os.register_at_fork(after_in_child=_http_worker_after_fork)


class ManagerHandle:
    """The master's record of the companion manager process."""

    def __init__(self, arbiter: "CompanionArbiter"):
        self.arbiter = arbiter
        self.pid = 0
        self.last_pid = 0
        self.lifeline: int | None = None  # read end; EOF = the whole old tree is gone
        self.spawned_at = 0.0
        self.exit_status: int | None = None  # recorded by reap (maybe in a signal handler)
        self.exit_unknown = False  # Gunicorn's own reap loop claimed it first
        self.crashes_in_a_row = 0  # deaths each within HEALTHY_UPTIME of their start
        self.next_spawn_at = 0.0
        self.stopping = False
        self.waiting_logged = False
        self.booting = False  # a replacement manager has not reported yet
        self.boot_report = b""
        self.boot_deadline = 0.0

    @property
    def log(self):
        return self.arbiter.log

    # -- reaping (may run inside Gunicorn 23's SIGCHLD handler: record only) ----

    def claim(self) -> None:
        """Reap the manager by its own pid before Gunicorn's waitpid(-1) loop
        would take it for an unknown worker."""
        if not self.pid:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Gunicorn's loop reaped it in the window between our waitpid and
            # its own (it exited right then): the status is lost, not the fact.
            self.pid, self.exit_unknown = 0, True
            return
        if pid:
            self.pid, self.exit_status = 0, status

    # -- the master loop's part (safe to log) ------------------------------------

    def wanted(self) -> bool:
        config = self.arbiter.companion_config
        return bool(config and config.specs) and not self.stopping

    def maintain(self) -> None:
        self.poll_boot()
        self._report_exit()
        if self.pid or self.stopping:
            return
        if not self.old_tree_gone():
            return
        if not self.wanted() or time.monotonic() < self.next_spawn_at:
            return
        self.spawn()

    def _report_exit(self) -> None:
        if self.exit_status is None and not self.exit_unknown:
            return
        if self.exit_unknown:
            how, asked_to_stop = "with an unknown status", False
        else:
            # ExitStatus names every signal, a real-time one without a name too
            # (signal.Signals(40) raises, and an exception here halts the master)
            status = ExitStatus.from_wait_status(self.exit_status)
            how = f"{'by' if status.signal is not None else 'with'} {status.describe()}"
            # The manager exits 0 only after a shutdown it was asked for: TERM,
            # INT or QUIT sent to it by someone other than the master.
            asked_to_stop = status.code == 0
        self.exit_status, self.exit_unknown = None, False
        self.booting = False
        self.kill_leftovers()
        if self.stopping:
            return
        # A stop on request is no crash, and a crash after a healthy run starts
        # the count over: only a manager that cannot stay up waits longer and
        # longer (up to RESPAWN_DELAY_MAX) instead of restarting every
        # companion in a tight loop.
        if asked_to_stop:
            self.crashes_in_a_row = 0
        elif time.monotonic() - self.spawned_at >= HEALTHY_UPTIME:
            self.crashes_in_a_row = 1
        else:
            self.crashes_in_a_row += 1
        delay = respawn_delay(self.crashes_in_a_row)
        self.next_spawn_at = time.monotonic() + delay
        self.log.error("Companion manager exited %s; starting a new one in %.1fs, "
                       "once its companions are gone", how, delay)

    def kill_leftovers(self) -> None:
        """The manager leads a session holding its whole tree; once it is dead
        (SIGKILLed, say), whatever of that session remains is killed here:
        PDEATHSIG took the companions, this takes their own children."""
        if not self.last_pid:
            return
        for pid in procfs.session_members(self.last_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def old_tree_gone(self, wait: float = 0.0) -> bool:
        """True once no process of the previous manager's tree holds the lifeline."""
        if self.lifeline is None:
            return True
        deadline = time.monotonic() + wait
        while _wait_readable(self.lifeline, deadline - time.monotonic()):
            try:
                data = os.read(self.lifeline, 4096)
            except BlockingIOError:
                continue
            if not data:
                os.close(self.lifeline)
                self.lifeline = None
                self.waiting_logged = False
                return True
        if not self.waiting_logged and time.monotonic() - self.spawned_at > HEALTHY_UPTIME:
            self.waiting_logged = True
            self.log.warning("Waiting for the old companion manager's companions to exit")
        return False

    def spawn(self, at_boot: bool = False) -> None:
        arbiter = self.arbiter
        if not at_boot:
            # A replacement runs what the files say now: a reread over the
            # control socket changed the old manager, not the master's copy.
            try:
                arbiter.companion_config = load_companion_config(arbiter.companion_sources)
            except ConfigError as exc:
                self.log.error("Companion config is invalid now; the new manager runs the "
                               "last valid one: %s", exc)
        read_end, write_end = os.pipe()
        if arbiter.cfg.preload_app and arbiter.cfg.companion_gc_freeze:
            # the preloaded objects join the permanent generation: collections
            # in the manager and companions then leave their pages shared
            gc.freeze()
        pid = fork_blocking_signals()
        if pid == 0:
            os.close(read_end)
            run_manager_process(arbiter, write_end)  # never returns
        os.close(write_end)  # HTTP workers forked from now on must not hold it
        self.pid, self.last_pid = pid, pid
        self.lifeline, self.spawned_at = read_end, time.monotonic()
        self.boot_report, self.boot_deadline = b"", time.monotonic() + BOOT_TIMEOUT
        if not at_boot:
            # A replacement reports while the master's loop goes on (HTTP
            # workers must not wait for a slow import): see poll_boot.
            self.booting = True
            return
        # At boot, wait: a manager that cannot boot stops Gunicorn before any
        # HTTP worker is forked.
        while (result := self._boot_result(wait=self.boot_deadline - time.monotonic())) is None:
            pass
        ok, message = result
        if not ok:
            # a failure to boot is not a crash: stop instead of retrying forever
            self.kill(signal.SIGKILL)
            self.wait_exit(5.0)
            raise HaltServer(f"Companion manager failed to boot: {message}", 1)

    def poll_boot(self) -> None:
        if self.booting and self._boot_result(wait=0.0) is not None:
            self.booting = False

    def _boot_result(self, wait: float) -> tuple[bool, str] | None:
        """Read the manager's boot line from the lifeline; None until it is whole."""
        if time.monotonic() >= self.boot_deadline:
            self.kill(signal.SIGKILL)
            return self._booted(False, f"no answer within {BOOT_TIMEOUT:g}s")
        if not _wait_readable(self.lifeline, wait):
            return None
        chunk = os.read(self.lifeline, 65536)
        if not chunk:
            return self._booted(False, "it exited before reporting (see the log above)")
        self.boot_report += chunk
        if not self.boot_report.endswith(b"\n"):
            return None
        if self.boot_report == READY:
            return self._booted(True, "")
        message = self.boot_report[len(ERROR_PREFIX):].decode("utf-8", "replace").rstrip("\n")
        return self._booted(False, message)

    def _booted(self, ok: bool, message: str) -> tuple[bool, str]:
        if ok:
            self.log.info("Companion manager booted (pid: %s)", self.last_pid)
        else:
            self.log.error("Companion manager failed to boot: %s", message)
        return ok, message

    def kill(self, sig: int) -> None:
        if self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout: float) -> bool:
        """Wait (in the master's main loop, not a handler) until the manager is reaped."""
        deadline = time.monotonic() + timeout
        while self.pid:
            self.claim()
            if not self.pid:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # woken early by the lifeline's EOF when the whole tree is gone
            if self.lifeline is not None:
                _wait_readable(self.lifeline, min(remaining, 0.05))
            else:
                time.sleep(min(remaining, 0.05))
        return True

    def stop_timeout(self) -> float:
        cfg = self.arbiter.cfg
        if cfg.companion_manager_stop_timeout is not None:
            return cfg.companion_manager_stop_timeout
        specs = self.arbiter.companion_config.specs if self.arbiter.companion_config else ()
        slowest = max((s.stop_timeout for s in specs), default=0.0)
        return slowest + cfg.companion_manager_shutdown_buffer


class CompanionArbiter(Arbiter):
    """Gunicorn's arbiter, plus the companion manager."""

    def __init__(self, app):
        self.companion_config: CompanionConfig = app.companion_config
        self.companion_sources: ConfigSources = app.companion_sources()
        self.companion_targets: dict = {}
        self.manager = ManagerHandle(self)
        self.companions_started = False
        self.reload_failed = False
        super().__init__(app)  # preloads the app when preload_app is set
        self._reexec_as_started()
        if self.cfg.preload_app:
            # Resolve in the master, after the preload, so companions share the
            # imported modules and a bad target stops the boot before any fork.
            by_name = resolve_all(self.companion_config.specs)
            # keyed by the target string: a later config may give a name a
            # different target, and a replacement manager must not run the old one
            self.companion_targets = {s.target: by_name[s.name]
                                      for s in self.companion_config.specs if s.target}

    def _reexec_as_started(self):
        """USR2 re-executes ``sys.executable`` with ``sys.argv``. Started as
        ``python -m gunicorn_companion``, that would run our ``__main__.py``
        as a script, putting the package's own directory first on sys.path
        (where ``settings.py`` or ``app.py`` could shadow the user's modules):
        re-execute with ``-m`` instead."""
        args = self.START_CTX["args"]
        main = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
        if len(args) > 1 and os.path.abspath(args[1]) == main:
            self.START_CTX["args"] = [args[0], "-m", __package__, *args[2:]]

    def companion_lock_scope(self) -> str:
        """What makes two masters "the same deployment" for singleton locks:
        the config they were started with (a hot upgrade keeps it)."""
        sources = self.companion_sources
        return sources.main_file or f"{self.cfg.proc_name}:{os.getcwd()}"

    def spawn_worker(self):
        """Gunicorn's, with the at-fork hook armed: the worker takes PDEATHSIG."""
        global _forking_http_worker_of
        _forking_http_worker_of = os.getpid()
        try:
            return super().spawn_worker()
        finally:
            _forking_http_worker_of = None

    # -- reaping: claim the manager first (see the module docstring) -----------

    def reap_workers(self):
        self.manager.claim()
        super().reap_workers()
        self.manager.claim()

    # -- the main loop ---------------------------------------------------------

    def manage_workers(self):
        if not self.companions_started:
            # First pass of the main loop: the manager starts before the HTTP
            # workers, so a companion that cannot boot stops Gunicorn early.
            self.companions_started = True
            if self.companion_config.specs:
                if not self.cfg.preload_app and any(s.target for s in self.companion_config.specs):
                    self.log.warning(
                        "preload_app is off: companions import their targets in the manager, "
                        "so their memory is not shared with the HTTP workers")
                self.manager.spawn(at_boot=True)
        self.manager.maintain()
        super().manage_workers()

    def reload(self):
        """Gunicorn's reload, except that an invalid config file no longer
        takes the master (and with it every worker and companion) down:
        Gunicorn's loader prints the fault and calls sys.exit, and here the
        running configuration stays instead."""
        running_cfg = self.app.cfg
        self.reload_failed = False
        try:
            super().reload()
        except SystemExit:
            if os.getpid() != self.pid:
                # A worker that reload() forked is exiting through this very
                # stack frame: let it go, it must never run master code.
                raise
            self.app.cfg = running_cfg
            for key, value in self.cfg.env.items():  # Gunicorn unset them before reading
                os.environ[key] = value
            self.reload_failed = True
            self.log.error("Reload failed: the configuration is invalid (see the message "
                           "above); keeping the running configuration")

    def handle_hup(self):
        super().handle_hup()
        if self.reload_failed:
            return  # rolled back: the companions keep the running config too
        try:
            self.companion_config = load_companion_config(self.companion_sources)
        except ConfigError as exc:
            self.log.error("Companion config not applied, keeping the running one: %s", exc)
            return
        if self.manager.pid:
            # The manager rereads and restarts only what changed.
            self.manager.kill(signal.SIGHUP)

    def kill_workers(self, sig):
        super().kill_workers(sig)
        # Gunicorn's own stop loop turns a SIGINT/SIGQUIT that arrives during a
        # graceful stop into SIGQUIT for its workers: the companions hurry too.
        if sig == signal.SIGQUIT and self.manager.stopping:
            self.manager.kill(signal.SIGQUIT)

    def _quick_stop_requested(self) -> bool:
        """Is a SIGINT or SIGQUIT waiting in Gunicorn's signal queue (a list
        in Gunicorn 23, a SimpleQueue later)? Other signals stay queued."""
        quick = (signal.SIGINT, signal.SIGQUIT)
        pending = self.SIG_QUEUE
        if isinstance(pending, list):
            return any(sig in quick for sig in pending)
        kept, found = [], False
        while True:
            try:
                sig = pending.get_nowait()
            except Exception:  # queue.Empty
                break
            found = found or sig in quick
            if sig not in quick:
                kept.append(sig)
        for sig in kept:
            pending.put_nowait(sig)
        return found

    def handle_usr1(self):
        super().handle_usr1()
        # logrotate's move-and-signal: the manager writes the companion logs
        self.manager.kill(signal.SIGUSR1)

    def stop(self, graceful=True):
        manager = self.manager
        deadline = time.monotonic() + manager.stop_timeout()
        if manager.pid and not manager.stopping:
            manager.kill(signal.SIGTERM if graceful else signal.SIGQUIT)
        elif manager.pid and not graceful:
            manager.kill(signal.SIGQUIT)  # a quick shutdown overtakes a graceful one
        manager.stopping = True
        super().stop(graceful)
        quick = not graceful
        while not manager.wait_exit(min(0.1, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            if not quick and self._quick_stop_requested():
                quick = True  # Ctrl-C (or QUIT) while companions drain: hurry them
                self.log.info("Quick shutdown requested")
                manager.kill(signal.SIGQUIT)
        if manager.pid:
            self.log.error("Companion manager did not stop in %.1fs; killing it",
                           manager.stop_timeout())
            manager.kill(signal.SIGKILL)  # PDEATHSIG takes its companions with it
            manager.wait_exit(5.0)
        manager.kill_leftovers()
        manager.old_tree_gone(wait=5.0)


def default_lock_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    # A manager that dropped root still sees root's XDG_RUNTIME_DIR (sudo
    # sets one): only a runtime dir of its own user is its own.
    if runtime and _owned_by_us(runtime):
        return os.path.join(runtime, "gunicorn-companion")
    return os.path.join(tempfile.gettempdir(), f"gunicorn-companion-{os.geteuid()}")


def _owned_by_us(path: str) -> bool:
    try:
        return os.stat(path).st_uid == os.geteuid()
    except OSError:
        return False


def prepare_lock_dir(cfg) -> str:
    """Create (or accept) the lock directory. In a shared /tmp another user
    may have made it first, to plant symlinks or hold our locks: it must be
    ours and private (safefs.private_dir_fault), or the boot stops."""
    path = cfg.companion_lock_dir or default_lock_dir()
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create companion_lock_dir {path!r}: {exc.strerror}") from None
    fault = safefs.private_dir_fault(path)
    if fault:
        raise ConfigError(f"companion_lock_dir {path!r} {fault}")
    if not os.access(path, os.W_OK):
        raise ConfigError(f"companion_lock_dir {path!r} is not writable")
    return path


def attach_control_server(manager: Manager, cfg, take_over: bool) -> None:
    server = ControlServer(
        cfg.companion_control_socket,
        cfg.companion_control_socket_mode,
        selector=manager.selector,
        handle=lambda request, respond: dispatch(manager, request, respond),
        log=manager.log,
        # Gunicorn's user owns the socket, even when the manager kept root
        owner=manager.base_identity,
    )
    server.bind(take_over=take_over)
    manager.control = server
    manager.extra_fds_to_close.append(server.close_in_child)
    manager.log.info("Companion control socket listening at %s", server.path)


def run_manager_process(arbiter: CompanionArbiter, lifeline: int) -> None:
    """The manager's life, in the freshly forked child. Never returns."""
    code = 1
    try:
        # Signals are still blocked (fork_blocking_signals): swap the master's
        # handlers for ours before anything can arrive.
        reset_signals(list(arbiter.SIGNALS) + [signal.SIGCHLD])
        master_pid = arbiter.pid
        proc_name = arbiter.proc_name
        cfg = arbiter.cfg
        # A session of our own holds the whole companion tree, so it can be
        # found and killed as one even after we are gone (see kill_leftovers);
        # as subreaper we inherit (and reap, and kill) orphaned descendants.
        os.setsid()
        become_subreaper()
        # The manager and its companions serve no HTTP: drop the listeners,
        # and the HTTP workers' heartbeat files a replacement manager (forked
        # after the workers) inherits. First, so that our own fds (the notify
        # fd a companion gets) number as low as at boot.
        for listener in arbiter.LISTENERS:
            listener.close()
        for worker in arbiter.WORKERS.values():
            worker.tmp.close()
        manager = Manager(
            arbiter.companion_config,
            {},
            log=arbiter.log,
            sources=arbiter.companion_sources,
            title=lambda name: util._setproctitle(f"companion {name} [{proc_name}]"),
            master_pid=master_pid,
            lock_scope=arbiter.companion_lock_scope(),
            gc_freeze=bool(cfg.preload_app and cfg.companion_gc_freeze),
            memory_check_interval=cfg.companion_memory_check_interval,
        )
        manager.install_signals()
        unblock_signals()
        # PDEATHSIG, then re-check: the master may have died before prctl.
        # USR2 and not SIGKILL: the manager must live long enough to kill its
        # companions' own children, which no PDEATHSIG reaches.
        if set_parent_death_signal(signal.SIGUSR2) and os.getppid() != master_pid:
            os._exit(1)
        util._setproctitle(f"companion manager [{proc_name}]")
        try:
            specs = arbiter.companion_config.specs
            base = privileges.gunicorn_identity(cfg)
            if problems := privileges.faults(specs, base):
                raise ConfigError(problems)
            manager.use_identity(base)
            if not privileges.keeps_root(specs, base):
                # Before any user code runs here (the imports below, without
                # preload). Changing credentials cleared PDEATHSIG: set it again.
                if privileges.drop_to(base):
                    if set_parent_death_signal(signal.SIGUSR2) and os.getppid() != master_pid:
                        os._exit(1)
                    if any(s.max_memory for s in specs):
                        arbiter.log.warning(
                            "max_memory is not enforced: after dropping root, processes are "
                            "not dumpable and the kernel hides their memory figures from the "
                            "companion manager (see docs/security.md)")
            # Without preload nothing was resolved in the master; with it, a
            # companion added by a reload since the boot was not either.
            known = arbiter.companion_targets
            manager.targets = {s.name: known[s.target] for s in specs if s.target in known}
            manager.targets.update(resolve_all(tuple(s for s in specs
                                                     if s.target not in known)))
            if any(s.singleton for s in arbiter.companion_config.specs):
                manager.lock_dir = prepare_lock_dir(cfg)
            manager.prepare_lock_dir = lambda: prepare_lock_dir(cfg)
            if cfg.companion_control_socket:
                # the new master of a hot upgrade takes the socket over
                attach_control_server(manager, cfg, take_over=bool(arbiter.master_pid))
        except (ConfigError, ControlSocketError, privileges.PrivilegeError) as exc:
            os.write(lifeline, ERROR_PREFIX + str(exc).encode("utf-8", "replace") + b"\n")
            os._exit(1)
        os.write(lifeline, READY)
        arbiter.log.info("Companion manager running (pid: %s) with %d companions",
                         os.getpid(), len(manager.records))
        code = manager.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        arbiter.log.exception("Companion manager crashed")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
