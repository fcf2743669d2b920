"""The only module that forks. Everything a child must do before it runs user
code happens here, in an order that matters; each hazard is named where it is
handled.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable

from . import notify, privileges, safefs
from .notify import FENCING_TOKEN_ENV, NOTIFY_FD_ENV, WATCHDOG_ENV
from .privileges import Identity
from .spec import CompanionSpec
from .targets import find_program

# Exit status of a companion whose parent was already gone when it checked.
EXIT_ORPHANED = 70
# Exit status of a companion whose setup (before the target ran) failed.
EXIT_SETUP_FAILED = 71
# Exit status of an exec companion whose program could not be run (as a shell's).
EXIT_EXEC_FAILED = 127

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36

_ALL_SIGNALS = set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP}


def _libc():
    # The running interpreter already has libc loaded: CDLL(None) finds prctl
    # there. (ctypes.util.find_library would run ldconfig in a subprocess,
    # which is slow and forks a child of the master before it has its signal
    # handlers.)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl  # noqa: B018 - raises AttributeError where there is none
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def set_dumpable() -> bool:
    """Undo the kernel's "not dumpable" after a change of credentials, so that
    processes of our own user (the companion manager, dropped to that same
    user) may read our /proc/PID/smaps_rollup (Linux only)."""
    if _LIBC is None:
        return False
    return _LIBC.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0) == 0


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when our parent dies (Linux only)."""
    if _LIBC is None:
        return False
    return _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def watch_parent_portably(parent_pid: int, interval: float = 1.0) -> None:
    """Where PDEATHSIG does not exist: exit when we are reparented.

    A thread is safe here only because it starts in a process that will not
    fork again (a companion). The manager has no such watch: off Linux, a
    manager whose master was SIGKILLed lives on until it is stopped.
    """

    def watch() -> None:
        while True:
            threading.Event().wait(interval)
            if os.getppid() != parent_pid:
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def fork_blocking_signals() -> int:
    """fork() with every signal blocked across it.

    Without this, a signal that lands in the child between fork and the reset
    of its handlers runs the *parent's* handler in the child: with a wakeup fd
    that writes into the parent's own socket (the parent would act on a signal
    meant for the child), and with a queueing handler the signal is recorded in
    a copy nobody reads and lost. The child unblocks once its handlers are its
    own (``reset_signals``); the parent unblocks at once.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return pid


def reset_signals(handled: Iterable[int]) -> None:
    """In a fresh child, signals still blocked: drop the parent's handlers and
    wakeup fd. The caller unblocks once its own handlers are in place."""
    signal.set_wakeup_fd(-1)
    for sig in handled:
        signal.signal(sig, signal.SIG_DFL)
    # a Python program expects KeyboardInterrupt on SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)


def unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def lowest_fd(fd: int | None) -> int | None:
    """``fd`` renumbered to the lowest free fd, if that is lower (a dup shares
    the open file, and with it a flock)."""
    if fd is None:
        return None
    low = os.dup(fd)  # the lowest free number, not inheritable like ``fd``
    if low < fd:
        os.close(fd)
        return low
    os.close(low)
    return fd


def spawn_companion(
    spec: CompanionSpec,
    target: Callable[[], object] | None,
    *,
    handled_signals: Iterable[int],
    close_in_child: Callable[[], None],
    title: Callable[[str], None],
    notify_fd: int | None = None,
    lock_path: str | None = None,
    stdout_fd: int | None = None,
    stderr_fd: int | None = None,
    identity: Identity | None = None,
    fencing_token: int | None = None,
) -> int:
    """Fork one companion; return its pid. The child never returns.

    ``stdout_fd``/``stderr_fd`` are the write ends of the manager's capture
    pipes (None: stderr goes where stdout goes). ``identity``: whom the
    companion runs as (None: as the manager)."""
    out, err = stdout_fd, stderr_fd
    manager_pid = os.getpid()
    # The manager opens the lock file, in its private lock directory, and
    # hands it to the companion's user; the companion only flocks it. (A
    # companion of another user could not create files in that directory.)
    owner = (identity.uid, identity.gid) if identity else (os.geteuid(), os.getegid())
    lock_fd = safefs.open_lock_file(lock_path, owner) if lock_path else None
    try:
        pid = fork_blocking_signals()
    except BaseException:
        close_fds(lock_fd)
        raise
    if pid:
        # flock belongs to the open file: a copy left open here would keep
        # the lock held after the companion is gone
        close_fds(lock_fd)
        # Also set the group from the parent: whichever of the two calls runs
        # first wins, so a stop signal sent to the group right after fork
        # cannot miss the child (the classic shell job-control race).
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child got there first, or already exited
        return pid
    _run_companion(spec, target, manager_pid, handled_signals, close_in_child, title, out, err,
                   notify_fd, lock_fd, identity, fencing_token)


def hold_singleton_lock(fd: int) -> int:
    """Take the companion's exclusive lock, waiting for an older instance.

    flock belongs to the open file, and the kernel drops it when the last
    process holding that file exits, however it exits: a SIGKILLed holder
    leaves no stale lock behind. The fd stays open for the companion's life.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        notify.send("lock-wait")
        fcntl.flock(fd, fcntl.LOCK_EX)  # wakes as soon as the holder is gone
    notify.send("lock-held")
    return fd


def forget_inherited_exit_handlers() -> None:
    """In a fresh companion: the exit handlers registered so far belong to the
    master (Gunicorn, the app's import) and must never run here; those the
    companion registers from now on are its own, and run when its target
    returns (``run_own_exit_handlers``), as they would at a program's end."""
    atexit._clear()
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        # multiprocessing registered its exit hook at import, in the master:
        # keep it (it joins the companion's own non-daemon children, which
        # django-q's cluster relies on), but forget the master's children, as
        # multiprocessing does itself in a process it forks.
        sys.modules["multiprocessing.process"]._children = set()
        atexit.register(mp_util._exit_function)


def run_own_exit_handlers() -> None:
    """What a Python program does on its way out, before our os._exit: wait
    for its non-daemon threads, then run its exit handlers (latest first)."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()


def _run_companion(spec, target, manager_pid, handled_signals, close_in_child, title, out, err,
                   notify_fd, lock_fd, identity, fencing_token):
    code = EXIT_SETUP_FAILED
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        reset_signals(handled_signals)
        unblock_signals()
        if identity is not None:
            # Before any of the companion's code, and before PDEATHSIG:
            # changing credentials clears the parent-death signal.
            try:
                privileges.drop_to(identity)
            except privileges.PrivilegeError as exc:
                print(f"gunicorn-companion: companion {spec.name!r}: {exc}", file=sys.stderr,
                      flush=True)
                os._exit(EXIT_SETUP_FAILED)
        if spec.max_memory and os.geteuid() != 0:
            # A drop (ours, or the manager's we inherited) made us non-dumpable,
            # which hides our memory figures from the manager (dropped to this
            # user too): max_memory could not be enforced. Dumpable again, we
            # are readable by our own user only, who can read the same
            # preloaded memory in an HTTP worker anyway.
            set_dumpable()
        # PDEATHSIG first, then re-check: if the manager died between fork and
        # prctl, no signal will ever come, and getppid() tells us instead.
        if set_parent_death_signal(signal.SIGKILL):
            if os.getppid() != manager_pid:
                os._exit(EXIT_ORPHANED)
        else:
            watch_parent_portably(manager_pid)
        close_in_child()
        forget_inherited_exit_handlers()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdout.flush()
        sys.stderr.flush()
        if out is not None:
            os.dup2(out, 1)
        if err is not None:
            os.dup2(err, 2)
        elif out is not None:
            os.dup2(1, 2)  # one pipe for both: their lines stay in order
        close_fds(*(fd for fd in (out, err) if fd not in (1, 2)))
        # The notify channel and the lock move to the lowest free fds, whatever
        # numbers the manager had: a POSIX shell can name only fds 0 to 9
        # (`>&$GUNICORN_COMPANION_NOTIFY_FD` in dash).
        notify_fd, lock_fd = lowest_fd(notify_fd), lowest_fd(lock_fd)
        if spec.cwd:
            os.chdir(spec.cwd)
        os.environ.update(dict(spec.env))
        os.environ["GUNICORN_COMPANION_NAME"] = spec.group_name
        os.environ["GUNICORN_COMPANION_INSTANCE"] = str(spec.instance)
        if notify_fd is not None:
            os.environ[NOTIFY_FD_ENV] = str(notify_fd)
        if spec.watchdog_timeout:
            os.environ[WATCHDOG_ENV] = f"{spec.watchdog_timeout:g}"
        if fencing_token is not None:
            os.environ[FENCING_TOKEN_ENV] = str(fencing_token)
        else:
            os.environ.pop(FENCING_TOKEN_ENV, None)  # a manager's own, inherited
        title(spec.name)
        if lock_fd is not None:
            hold_singleton_lock(lock_fd)
        # The notify channel and the lock outlive an exec, by the companion's
        # `command` or by a target that hands off to another program (Frappe's
        # socket.io companion execs node): a singleton's lock must stay held,
        # and the program may say ready() over the fd its environment names.
        for fd in (notify_fd, lock_fd):
            if fd is not None:
                os.set_inheritable(fd, True)
        if spec.command:
            _exec(spec)  # never returns
        # stdout is a pipe now, which Python would block-buffer: a companion's
        # print() should reach the log (and tail) when it is printed
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)
        code = 1
        result = target()
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        # the target crashed: say so on its stderr; the manager logs the exit
        traceback.print_exc()
    finally:
        # Never return into the manager's code: os._exit skips the interpreter's
        # own shutdown, whose handlers and finalizers belong to the master.
        try:
            run_own_exit_handlers()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def _exec(spec: CompanionSpec) -> None:
    """Replace the companion with its program (the notify channel and the
    lock are inheritable already)."""
    # Python ignores SIGPIPE and SIGXFSZ; a program that is not Python expects
    # the default (as subprocess restores them).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    program = find_program(spec) or spec.command[0]
    try:
        os.execve(program, list(spec.command), os.environ)
    except OSError as exc:
        print(f"gunicorn-companion: cannot run {spec.command[0]!r} for companion "
              f"{spec.name!r}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(EXIT_EXEC_FAILED)


def spawn_keeper(run: Callable[[], int], *, handled_signals: Iterable[int],
                 close_in_child: Callable[[], None], title: Callable[[str], None]) -> int:
    """Fork the lease keeper (keeper.py); return its pid. The child runs
    ``run`` and never returns. It stays in the manager's process group and
    session, so whatever ends the manager's tree ends it too."""
    manager_pid = os.getpid()
    pid = fork_blocking_signals()
    if pid:
        return pid
    code = EXIT_SETUP_FAILED
    try:
        reset_signals(handled_signals)
        # The manager's SIGTERM means "stop gracefully", and a graceful stop
        # releases leases through us: we leave only when it tells us to, or
        # when it is gone (PDEATHSIG, then EOF on our socket).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        unblock_signals()
        if set_parent_death_signal(signal.SIGKILL) and os.getppid() != manager_pid:
            os._exit(EXIT_ORPHANED)
        close_in_child()
        forget_inherited_exit_handlers()
        title("lease keeper")
        code = run()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code & 0xFF)


def become_subreaper() -> bool:
    """Orphaned descendants get reparented to us instead of init (Linux only)."""
    if _LIBC is None:
        return False
    return _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
