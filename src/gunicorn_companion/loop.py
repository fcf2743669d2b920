"""The manager's loop: one selector, no threads, no tick. It turns fd
readiness, signals and timers into calls on the supervisor.

Why a wakeup socket and not signalfd or a self-pipe of our own: CPython
already writes each caught signal's number to the fd given to
``signal.set_wakeup_fd`` from its C-level handler, so the loop learns *which*
signals arrived from the bytes it reads, with no Python code running in the
handler and no queue to share with it. signalfd would need every signal
blocked in every thread (and be undone by a library that unblocks), and is
Linux-only. The Python-level handlers are no-ops: the byte is the record.

What a signal means is ``handle_signal``, a plain function of the
supervisor, so the deterministic simulation runs the same code.
"""

from __future__ import annotations

import faulthandler
import os
import selectors
import signal
import socket
import struct

from .states import State
from .supervisor import Supervisor

HANDLED_SIGNALS = (
    signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
)

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


def handle_signal(supervisor: Supervisor, signum: int) -> None:
    """What each signal the manager handles means."""
    log = supervisor.log
    if signum == signal.SIGUSR2 and supervisor.host.master_gone():
        # our PDEATHSIG: the master is gone, and with it whoever would
        # clean up after us. Take every companion down now.
        log.error("Gunicorn master (pid %s) died; stopping every companion",
                  supervisor.master_pid)
        supervisor.shutdown(quick=True)
    elif signum == signal.SIGCHLD:
        supervisor.reap()
    elif signum == signal.SIGTERM:
        supervisor.shutdown(quick=False)
    elif signum in (signal.SIGINT, signal.SIGQUIT):
        supervisor.shutdown(quick=True)
        supervisor.kill_leftovers_now()
    elif signum == signal.SIGHUP:
        supervisor.reread()
    elif signum == signal.SIGUSR1:
        # Gunicorn's "reopen log files", forwarded by the master: for
        # logrotate's move-and-signal
        try:
            # the manager's own (Gunicorn) log, moved too. First: with
            # capture_output it points our stdout and stderr at the new file.
            log.reopen_files()
        except OSError as exc:
            log.error("Cannot reopen the companion manager's log: %s", exc)
        supervisor.host.reopen_output()  # never raises: a failing file logs and drops lines
        log.info("Companion log files reopened")
    # USR1/USR2/TTIN/TTOU/WINCH are the master's business: we only make
    # sure their default action (some terminate) cannot kill the manager.


_PASSCRED = getattr(socket, "SO_PASSCRED", None)  # Linux
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size) if _PASSCRED is not None else 0


def _sender_pid(ancillary) -> int | None:
    for level, kind, data in ancillary:
        if (level == socket.SOL_SOCKET and kind == getattr(socket, "SCM_CREDENTIALS", None)
                and len(data) >= _UCRED.size):
            return _UCRED.unpack_from(data)[0]
    return None


def readiness(records) -> list[tuple[str, str, bool]]:
    """(name, state, wanted) of each companion, for systemd's READY=1 and
    STATUS=. A fleet singleton waiting for its lease is STANDBY, which counts
    as settled: another host runs it (or the lease service is down, which
    must not keep this host's HTTP service from starting)."""
    return [(r.name, "STANDBY" if r.spec.fleet and r.state == State.STARTING and r.pid is None
             else str(r.state), r.wanted) for r in records.values()]


def _record_only(signum, frame):
    """The C handler already wrote ``signum`` to the wakeup socket: nothing to do."""


class ManagerLoop:
    """The selector loop around one supervisor and its real host."""

    def __init__(self, supervisor: Supervisor, selector: selectors.BaseSelector):
        self.supervisor = supervisor
        self.host = supervisor.host
        self.log = supervisor.log
        self.selector = selector
        self.control = None  # a ControlServer, when companion_control_socket is set
        self.news = None  # a sdnotify.ManagerNews under systemd's Type=notify
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        # One datagram socket for every companion's ready()/heartbeat(): the
        # companions inherit the sending end (see notify.py).
        self._notify_r, self.notify_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ignored_signals: tuple[int, ...] = ()  # set by install_signals
        self.host.notify_fd = self.notify_w.fileno()
        self.host.handled_signals = HANDLED_SIGNALS
        self.host.child_closers.append(self.close_in_child)

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
        # an ignored signal stays ignored across fork and exec: the
        # companion starts from the defaults, not the manager's choices
        self.host.handled_signals = HANDLED_SIGNALS + self.ignored_signals
        # Restart system calls interrupted by our no-op handlers instead of
        # raising EINTR in the middle of a write to a log file.
        for sig in HANDLED_SIGNALS:
            signal.siginterrupt(sig, False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._on_wakeup)
        for sock in (self._notify_r, self.notify_w):
            sock.setblocking(False)
        if _PASSCRED is not None:
            # the kernel attaches each sender's pid to its datagram
            self._notify_r.setsockopt(socket.SOL_SOCKET, _PASSCRED, 1)
        self.selector.register(self._notify_r, selectors.EVENT_READ, self._on_notify)

    def attach_control(self, server) -> None:
        self.control = server
        self.host.child_closers.append(server.close_in_child)

    def close_in_child(self) -> None:
        """The loop's part of what a freshly forked companion must not keep."""
        self.selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
        self._notify_r.close()  # the sending end stays: it is the companion's channel

    def run(self) -> int:
        supervisor = self.supervisor
        supervisor.start()
        while not supervisor.finished():
            deadline = supervisor.next_deadline()
            if self.news is not None and self.news.next_keepalive is not None:
                deadline = min(d for d in (deadline, self.news.next_keepalive) if d is not None)
            timeout = None if deadline is None else max(0.0, deadline - self.host.now())
            for key, mask in self.selector.select(timeout):
                key.data(key, mask)
            supervisor.fire_due()
            if self.news is not None:
                self.news.after_loop_turn(readiness(supervisor.records))
        if self.control is not None:
            self.control.close()
        supervisor.finish()
        self.host.close()
        self.log.info("Companion manager exiting (pid: %s)", os.getpid())
        return 0

    def _on_wakeup(self, key, mask) -> None:
        try:
            data = self._wakeup_r.recv(4096)
        except BlockingIOError:
            return
        # Several SIGCHLDs may arrive as several bytes: reaping once handles them all.
        for signum in dict.fromkeys(data):
            if signum == signal.SIGHUP and self.news is not None:
                self.news.expect_settle()  # systemd waits for READY=1 again
            handle_signal(self.supervisor, signum)

    def _on_notify(self, key, mask) -> None:
        while True:
            try:
                data, ancillary, _, _ = self._notify_r.recvmsg(256, _CREDENTIALS_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            what, _, pid = data.decode("ascii", "replace").partition(" ")
            sender = _sender_pid(ancillary)
            if sender is not None:
                # Who sent it is what the kernel says: every companion holds
                # this socket, and a compromised one could write another's pid.
                self.supervisor.notified(sender, what)
            elif pid.isdigit():
                self.supervisor.notified(int(pid), what)  # no SO_PASSCRED here
