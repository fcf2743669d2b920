"""No thread exists in a process when it forks companions: Python 3.12 and
later warn (DeprecationWarning) when a multi-threaded process forks, because
a lock another thread held stays locked forever in the child.

An at-fork hook in the config (the config runs in the master, and every
process forked from it inherits the hook) records how many threads the
forking process has, from /proc: the master's forks (the manager, HTTP
workers, a USR2 re-exec) and the manager's (the companions)."""

from __future__ import annotations

import signal

import pytest

RECORD_FORKS = """
import os as _os, sys as _sys
def _count_threads():
    # what forks: the master starting a manager, or a manager starting a
    # companion (innermost first: the manager runs inside the master's spawn)
    frame, kind = _sys._getframe(1), "other"
    while frame is not None and kind == "other":
        if frame.f_code.co_filename.endswith(_os.path.join("gunicorn_companion", "arbiter.py")) \\
                and frame.f_code.co_name == "fork_manager":
            kind = "manager"
        if frame.f_code.co_filename.endswith(_os.path.join("gunicorn_companion", "spawn.py")) \\
                and frame.f_code.co_name == "spawn_companion":
            kind = "companion"
        frame = frame.f_back
    with open(_os.path.join(_os.environ["COMPANION_STATE"], "forks"), "a") as f:
        f.write(f"{kind} {_os.getpid()} {len(_os.listdir('/proc/self/task'))}\\n")
_os.register_at_fork(before=_count_threads)
"""


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_master_and_manager_have_one_thread_when_they_fork(server, worker_class):
    srv = server(RECORD_FORKS + f"""
preload_app = True
workers = 2
threads = 2
worker_class = {worker_class!r}
graceful_timeout = 1
companion_workers = [{{"name": "alpha", "target": "compapp:sleeper"}},
                     {{"name": "beta", "target": "compapp:crasher", "startretries": 1,
                      "restart_delay": 0.05}}]
""")
    manager = srv.wait_manager()
    srv.wait_starts("alpha")
    srv.wait_starts("beta", 2)  # and a restart, forked later by the manager's loop
    srv.wait_log("Booting worker", count=2)
    assert b"hello from the web" in srv.http_get()
    srv.signal(signal.SIGHUP)  # a reload forks new HTTP workers
    srv.wait_log("Booting worker", count=4)
    srv.wait_starts("alpha")
    forks = [line.split() for line in (srv.state / "forks").read_text().splitlines()]
    threads = {(kind, int(pid), int(n)) for kind, pid, n in forks if kind != "other"}
    # the master started one manager and the manager every companion, and
    # each was the only thread of its process when it forked
    assert {(kind, pid) for kind, pid, _ in threads} == {("manager", srv.pid),
                                                         ("companion", manager)}, forks
    assert {n for _, _, n in threads} == {1}, forks
