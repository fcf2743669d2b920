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

import os
import select
import signal
import sys
import time

from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from . import boot, procfs, proctitle, sdnotify
from .handle import ManagerBootFailed, ManagerDriver, Phase
from .loading import CompanionConfig, ConfigSources, load_companion_config
from .spawn import (
    EXIT_ORPHANED,
    fork_blocking_signals,
    reset_signals,
    set_parent_death_signal,
)
from .spec import ConfigError


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


def manager_stop_timeout(cfg, specs) -> tuple[float, str]:
    """How long the master waits for the manager to stop, and how that
    number came about, for --print-config (pure)."""
    if cfg.companion_manager_stop_timeout is not None:
        return cfg.companion_manager_stop_timeout, "set"
    buffer = cfg.companion_manager_shutdown_buffer
    slowest = max(specs, key=lambda s: s.stop_timeout, default=None)
    if slowest is None:
        return buffer, f"derived: no companions, companion_manager_shutdown_buffer {buffer:g}"
    return slowest.stop_timeout + buffer, (
        f"derived: the slowest stop_timeout, {slowest.stop_timeout:g} for {slowest.name!r}, "
        f"+ companion_manager_shutdown_buffer {buffer:g}")


class OsMasterHost:
    """The master's OS calls about its manager (handle.MasterHost): fork it,
    signal it, claim it by pid, the lifeline, its session."""

    def __init__(self, arbiter: "CompanionArbiter"):
        self.arbiter = arbiter
        self.lifeline: int | None = None  # read end; EOF = the whole old tree is gone
        self.replacements = 0  # managers forked to replace a dead one (for the metrics)

    @property
    def log(self):
        return self.arbiter.log  # Gunicorn makes a new one on each reload

    def now(self) -> float:
        return time.monotonic()

    def fork_manager(self, at_boot: bool) -> int:
        arbiter = self.arbiter
        if not at_boot:
            # A replacement runs what the files say now: a reread over the
            # control socket changed the old manager, not the master's copy.
            try:
                arbiter.companion_config = load_companion_config(arbiter.companion_sources)
            except ConfigError as exc:
                arbiter.log.error("Companion config is invalid now; the new manager runs the "
                                  "last valid one: %s", exc)
        replacements = self.replacements + (0 if at_boot else 1)
        self._close_lifeline()
        read_end, write_end = os.pipe()
        boot.freeze_before_fork(boot.gc_freeze_wanted(arbiter.cfg))
        pid = fork_blocking_signals()
        if pid == 0:
            os.close(read_end)
            run_manager_process(arbiter, write_end, replacements)  # never returns
        self.replacements = replacements
        os.close(write_end)  # HTTP workers forked from now on must not hold it
        self.lifeline = read_end
        return pid

    def signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def claim(self, pid: int) -> tuple[bool, int | None]:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Gunicorn's loop reaped it in the window between our waitpid and
            # its own (it exited right then): the status is lost, not the fact.
            return True, None
        return bool(reaped), status if reaped else None

    def read_lifeline(self, wait: float) -> bytes | None:
        if self.lifeline is None:
            return b""
        if not _wait_readable(self.lifeline, wait):
            return None
        try:
            data = os.read(self.lifeline, 65536)
        except BlockingIOError:
            return None
        if not data:
            self._close_lifeline()
        return data

    def sweep_session(self, leader: int) -> None:
        """The manager leads a session holding its whole tree; once it is dead
        (SIGKILLed, say), whatever of that session remains is killed here:
        PDEATHSIG took the companions, this takes their own children."""
        for pid in procfs.session_members(leader):
            self.signal(pid, signal.SIGKILL)

    def _close_lifeline(self) -> None:
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None


class CompanionArbiter(Arbiter):
    """Gunicorn's arbiter, plus the companion manager."""

    def __init__(self, app):
        self.companion_config: CompanionConfig = app.companion_config
        self.companion_sources: ConfigSources = app.companion_sources()
        self.companion_targets: dict = {}
        self.manager = ManagerDriver(OsMasterHost(self))
        self.companions_started = False
        self.reload_failed = False
        self.systemd: sdnotify.MasterReadiness | None = None  # under Type=notify
        super().__init__(app)  # preloads the app when preload_app is set
        self._reexec_as_started()
        if self.cfg.preload_app:
            # Resolve in the master, after the preload, so companions share the
            # imported modules and a bad target stops the boot before any fork.
            specs = self.companion_config.specs
            by_name = boot.resolve_targets(specs)
            # keyed by the target string: a later config may give a name a
            # different target, and a replacement manager must not run the old one
            self.companion_targets = {s.target: by_name[s.name] for s in specs if s.target}

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

    def start(self):
        # Before Gunicorn's start(), which would send READY=1 before any
        # worker or companion exists (sdnotify.py)
        self.systemd = sdnotify.MasterReadiness.from_environ(os.environ, self.log)
        super().start()

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
                try:
                    self.manager.start_at_boot()
                except ManagerBootFailed as exc:
                    raise HaltServer(f"Companion manager failed to boot: {exc}", 1) from None
            elif self.systemd:
                self.systemd.no_companions()
        self.manager.maintain(wanted=bool(self.companion_config.specs))
        super().manage_workers()
        if self.systemd:
            self.systemd.news(self.manager.read_news())
            self.systemd.after_loop_turn(workers_up=len(self.WORKERS) >= self.num_workers)

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
        if self.systemd:
            self.systemd.reloading()  # READY=1 again once the manager settles
        super().handle_hup()
        if self.reload_failed or not self._reload_companions():
            if self.systemd:
                self.systemd.news(["settled"])  # nothing changes: nothing to wait for
            return
        if self.manager.pid:
            # The manager rereads and restarts only what changed.
            self.manager.forward(signal.SIGHUP)
        elif self.systemd:
            self.systemd.news(["settled"])

    def _reload_companions(self) -> bool:
        """Re-read the companion config for a HUP; False keeps the running one."""
        try:
            self.companion_config = load_companion_config(self.companion_sources)
        except ConfigError as exc:
            self.log.error("Companion config not applied, keeping the running one: %s", exc)
            return False
        return True

    def kill_workers(self, sig):
        super().kill_workers(sig)
        # Gunicorn's own stop loop turns a SIGINT/SIGQUIT that arrives during a
        # graceful stop into SIGQUIT for its workers: the companions hurry too.
        if sig == signal.SIGQUIT and self.manager.phase is Phase.STOPPING:
            self.manager.stop(graceful=False)

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
        self.manager.forward(signal.SIGUSR1)

    def companion_stop_timeout(self) -> float:
        specs = self.companion_config.specs if self.companion_config else ()
        return manager_stop_timeout(self.cfg, specs)[0]

    def stop(self, graceful=True):
        self.manager.shutdown(
            graceful, self.companion_stop_timeout(),
            then=lambda: super(CompanionArbiter, self).stop(graceful),
            quick_requested=self._quick_stop_requested)


def run_manager_process(arbiter: CompanionArbiter, lifeline: int,
                        manager_restarts: int = 0) -> None:
    """The manager's life, in the freshly forked child. Never returns."""
    code = 1
    try:
        # Signals are still blocked (fork_blocking_signals): swap the master's
        # handlers for ours before anything can arrive (boot.build installs them).
        reset_signals(list(arbiter.SIGNALS) + [signal.SIGCHLD])
        proc_name = arbiter.proc_name
        # The manager and its companions serve no HTTP: drop the listeners.
        for listener in arbiter.LISTENERS:
            listener.close()
        # and the HTTP workers' heartbeat files a replacement manager (forked
        # after the workers) inherits. First, so that our own fds (the notify
        # fd a companion gets) number as low as at boot.
        for worker in arbiter.WORKERS.values():
            worker.tmp.close()
        proctitle.set_title(proctitle.manager_title(proc_name), proctitle.MANAGER_COMM)
        code = boot.run(boot.BootValues(
            config=arbiter.companion_config,
            sources=arbiter.companion_sources,
            log=arbiter.log,
            cfg=arbiter.cfg,
            master_pid=arbiter.pid,
            lock_scope=arbiter.companion_lock_scope(),
            title=lambda name: proctitle.set_title(proctitle.companion_title(name, proc_name),
                                                   proctitle.comm_of(name)),
            known_targets=arbiter.companion_targets,
            take_over_socket=bool(arbiter.master_pid),
            # the master forwards the companions' news to systemd (sdnotify.py)
            notify_systemd=bool(arbiter.systemd),
            systemd_keepalive=arbiter.systemd.keepalive_every() if arbiter.systemd else None,
            manager_restarts=manager_restarts,
        ), lifeline)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        arbiter.log.exception("Companion manager crashed")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
