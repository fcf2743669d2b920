"""Stray signals: whatever a process of the tree receives, the server keeps
serving. Real servers, real kill(2); each step waits until the kernel has
delivered the signal (it left the pending set, or the process is gone)."""

import os
import signal
import time
from pathlib import Path

import pytest
from support import Control, proc_stat, running_code, wait_until

# Stray signals whose default action would terminate (or stop) a process and
# that mean nothing to the manager: it ignores them. (Python names SIGSTKFLT,
# 16 on Linux, from 3.11 on.)
STRAYS = [signal.SIGALRM, signal.SIGPROF, signal.SIGVTALRM, signal.SIGXCPU, signal.SIGIO,
          signal.SIGPWR, getattr(signal, "SIGSTKFLT", 16), signal.SIGTSTP, signal.SIGSEGV,
          signal.SIGABRT, signal.SIGRTMIN, 40, signal.SIGRTMAX]


def config(sock):
    return f"""
        preload_app = True
        workers = 1
        companion_control_socket = {str(sock)!r}
        companion_workers = [
            {{"name": "target", "target": "compapp:sleeper", "startsecs": 0,
              "restart_delay": 0.05}},
            {{"name": "prog", "command": ["sleep", "1000"], "startsecs": 0,
              "restart_delay": 0.05}},
        ]
    """


NAMES = ("target", "prog")


def status(sock):
    """Companions by name, or None while no manager answers (one is replaced)."""
    try:
        conn = Control(sock, timeout=5)
        try:
            reply = conn.request({"cmd": "status"})
        finally:
            conn.close()
    except (OSError, ValueError):
        return None
    return {c["name"]: c for c in reply["companions"]}


def stopped(pid):
    fields = proc_stat(pid)
    return fields is not None and fields[0] in ("T", "t")


def all_running(sock):
    """Every companion RUNNING as a live process that is not stopped: the status."""
    companions = status(sock)
    if companions is None or set(companions) != set(NAMES):
        return None
    for entry in companions.values():
        pid = entry["pid"]
        if entry["state"] != "RUNNING" or not running_code(pid) or stopped(pid):
            return None
    return companions


def pending_signals(pid):
    """Signals sent to ``pid`` but not yet delivered (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)


def ignored_signals(pid):
    text = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line for line in text.splitlines() if line.startswith("SigIgn:"))[7:], 16)
    return {sig for sig in signal.valid_signals() if mask & (1 << (sig - 1))}


def send_and_wait_delivery(pid, sig):
    """kill(2), then wait until the kernel has acted on it: a process that
    ignores it never had it pending; one it kills is exiting."""
    os.kill(pid, sig)
    wait_until(lambda: not running_code(pid) or not pending_signals(pid) & (1 << (sig - 1)),
               message=f"signal {sig} delivered to {pid}")


def assert_serving(srv, sock, message):
    """The master serves HTTP, the control socket answers, every companion is RUNNING."""
    companions = srv.until(lambda: all_running(sock), message=message)
    assert b"hello from the web" in srv.http_get()
    return companions


def test_a_real_time_signal_to_the_manager_leaves_the_server_serving(server, sock_path):
    # kill -40 once killed the manager, and naming that signal crashed the master
    srv = server(config(sock_path))
    manager = srv.wait_manager()
    assert_serving(srv, sock_path, "companions RUNNING")
    send_and_wait_delivery(manager, 40)
    assert_serving(srv, sock_path, "everything serving after signal 40 to the manager")
    assert srv.proc.poll() is None
    assert "Unhandled exception in main loop" not in srv.log()


def test_the_manager_ignores_stray_signals_and_its_companions_do_not(server, sock_path):
    srv = server(config(sock_path))
    manager = srv.wait_manager()
    before = assert_serving(srv, sock_path, "companions RUNNING")
    # The manager's ignored signals must not leak into what the companions
    # run: an ignored disposition survives fork and exec.
    assert ignored_signals(manager) >= set(STRAYS)
    assert not ignored_signals(before["prog"]["pid"]) & (set(STRAYS) | {signal.SIGXFSZ})
    for sig in STRAYS:
        send_and_wait_delivery(manager, sig)
        assert not stopped(manager), signal.Signals(sig) if sig in signal.Signals else sig
    after = assert_serving(srv, sock_path, "everything serving after the stray signals")
    assert srv.manager_pid() == manager
    assert {n: c["pid"] for n, c in after.items()} == {n: c["pid"] for n, c in before.items()}
    assert "Companion manager exited" not in srv.log()


# Signals the manager acts on by exiting; the master then replaces it.
MANAGER_EXITS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL}
# What a Gunicorn master (ours catches and ignores exactly the signals plain
# Gunicorn does) survives; the rest of its signals stop it, as in Gunicorn
# (TERM, INT, QUIT), start a new master (USR2), or kill it (ALRM, real-time).
MASTER_SURVIVES = [signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU,
                   signal.SIGWINCH, signal.SIGCHLD, signal.SIGCONT, signal.SIGURG,
                   signal.SIGPIPE, signal.SIGXFSZ]
STOPPING = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


def _name(sig):
    return signal.Signals(sig).name if sig in set(signal.Signals) else f"signal {sig}"


def test_every_signal_to_the_manager_or_a_companion_leaves_everything_serving(
        server, sock_path):
    srv = server(config(sock_path))
    srv.wait_manager()
    assert_serving(srv, sock_path, "companions RUNNING")
    replaced = set()
    for sig in sorted(signal.valid_signals()):
        manager = srv.manager_pid()
        send_and_wait_delivery(manager, sig)
        if sig == signal.SIGSTOP:
            # a stopped manager is paused, not dead: nothing is replaced, and
            # the master goes on serving until SIGCONT resumes it
            wait_until(lambda pid=manager: stopped(pid), message="the manager stopped")
            assert b"hello from the web" in srv.http_get()
            os.kill(manager, signal.SIGCONT)
        assert_serving(srv, sock_path, f"everything serving after {_name(sig)} to the manager")
        if srv.manager_pid() != manager:
            replaced.add(sig)
    assert replaced == MANAGER_EXITS
    manager = srv.manager_pid()
    for sig in sorted(signal.valid_signals()):
        target = status(sock_path)["target"]["pid"]
        send_and_wait_delivery(target, sig)
        if sig == signal.SIGINT:
            # Python turns it into KeyboardInterrupt: the target exits, through
            # its exit handlers, a moment after the signal was delivered
            wait_until(lambda pid=target: not running_code(pid), message="SIGINT's exit")
        if sig in STOPPING and running_code(target):
            wait_until(lambda pid=target: stopped(pid), message="the companion stopped")
            os.kill(target, signal.SIGCONT)
        assert_serving(srv, sock_path, f"everything serving after {_name(sig)} to a companion")
    assert srv.manager_pid() == manager
    for sig in MASTER_SURVIVES:
        send_and_wait_delivery(srv.pid, sig)
        assert_serving(srv, sock_path, f"everything serving after {_name(sig)} to the master")
    assert srv.manager_pid() == manager
    assert "Unhandled exception" not in srv.log()


def test_a_manager_that_keeps_dying_is_replaced_ever_more_slowly_unless_it_was_asked_to_stop(
        server, sock_path):
    # Each death within HEALTHY_UPTIME of its start doubles the delay; an exit
    # with status 0 (the manager was asked to stop: TERM, INT or QUIT sent to
    # it, not by the master) is no crash: 0.5s, and the doubling starts over.
    srv = server(config(sock_path))
    manager = srv.wait_manager()
    srv.wait_log(f"Companion manager booted (pid: {manager})")
    expected = [(signal.SIGKILL, "by signal SIGKILL", 0.5),
                (signal.SIGKILL, "by signal SIGKILL", 1.0),
                (signal.SIGTERM, "with exit code 0", 0.5),
                (signal.SIGKILL, "by signal SIGKILL", 0.5)]  # 2.0 without the reset
    for count, (sig, how, delay) in enumerate(expected, 1):
        sent = time.monotonic()
        os.kill(manager, sig)
        new = srv.wait_manager(other_than=manager)
        # a lower bound only: the master respawns `delay` after it saw the death
        assert time.monotonic() - sent >= delay
        srv.wait_log(f"Companion manager booted (pid: {new})")
        lines = [line for line in srv.log().splitlines() if "Companion manager exited" in line]
        assert len(lines) == count
        assert f"exited {how}; starting a new one in {delay:.1f}s" in lines[-1], lines
        manager = new
    assert_serving(srv, sock_path, "everything serving after the replacements")


# -- a SIGKILLed master ---------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_nothing_outlives_a_sigkilled_master_and_its_port_is_free_at_once(server, worker_class):
    # HTTP workers used to notice their master's death only on their next
    # loop turn (sync: up to timeout/2, 15 s), holding the listening socket.
    config = f"""
        preload_app = True
        workers = 2
        worker_class = {worker_class!r}
        # a SIGTERM that reaches a worker before it has its own handlers is
        # lost (Gunicorn's hazard; gevent boots slowly): teardown waits this
        graceful_timeout = 1
        companion_workers = [{{"name": "alpha", "target": "compapp:sleeper"}}]
    """
    srv = server(config)
    srv.wait_manager()
    srv.wait_starts("alpha")
    srv.wait_log("Booting worker", count=2)
    assert b"hello from the web" in srv.http_get()
    srv.signal(signal.SIGKILL)
    srv.wait_exit()
    # measured: about 0.03 s; the deadline leaves room for a loaded machine
    wait_until(lambda: not srv.tree(), timeout=3, message="nothing of the tree left")
    # like a supervisor's restart: the same port, bound on the first try
    again = server(config, port=srv.port)
    again.wait_log("Booting worker", count=2)
    assert b"hello from the web" in again.http_get()
    assert "Connection in use" not in again.log()
