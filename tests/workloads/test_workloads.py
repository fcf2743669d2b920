"""Real workloads as companions, each against a real ``redis-server``.

Every workload runs its library's own entry point, forked from a preloaded
Gunicorn master (apps/ holds the small apps; docs/workloads.md the table). For
each one:

- jobs handed over by a web request complete (each job writes TOKEN.done);
- ``restart``, then ``stop`` and ``start``, each 10 times through the control
  CLI, every one graceful (no SIGKILL, no unexpected exit in the log), within a
  measured bound, with a job completing after each;
- jobs in flight when the master gets SIGTERM complete, and the tree is gone;
- SIGKILL of the master, and separately of the manager, leaves nothing behind.

The repetition is the point: a stop that hangs one time in five (RQ's
WorkerPool) is caught by ten. Run with ``make test-workloads``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import alive, control_command, free_port, proc_stat, wait_until

APPS = Path(__file__).parent / "apps"
CYCLES = 10
# Long enough for an in-flight job (IN_FLIGHT_SECONDS) with room to spare on a
# loaded machine, short enough that a stop that hangs fails the test quickly.
STOP_TIMEOUT = 6
IN_FLIGHT_SECONDS = 1.5
IN_CYCLE_SECONDS = 0.5  # the job in flight at each restart and stop
JOB_DEADLINE = 30.0
SIGKILL_LINE = "; sending SIGKILL"
UNEXPECTED_LINE = "exited unexpectedly"


@dataclass(frozen=True)
class Workload:
    name: str
    companions: str  # the companion_workers list, as Python source
    cycled: str  # the companion that is restarted and stopped
    modules: tuple[str, ...]  # what must be importable
    app: str = "wlweb:app"
    env: dict = field(default_factory=dict)
    ports: tuple[str, ...] = ()  # environment variables that get a free port each
    program: str | None = None  # a program that must be on PATH
    # Jobs run in the cycled companion (or its children): one in flight at a
    # stop is done when the stop returns. Not so for beat, which only sends them.
    runs_jobs: bool = True
    # Seconds: about three times the largest measured (docs/workloads.md), for a
    # loaded 2-core machine. A stop that ends in SIGKILL fails on its log line
    # whatever it took.
    restart_bound: float = 5.0
    stop_bound: float = 5.0
    start_bound: float = 5.0


WORKLOADS = [
    Workload("rq-worker", '[{"name": "rq", "target": "wlrq:run_worker"}]', "rq",
             ("rq", "redis")),
    # The pool checks its workers once a second: a stop takes 1 to 2 s.
    Workload("rq-pool", '[{"name": "rqpool", "target": "wlrq:run_pool"}]', "rqpool",
             ("rq", "redis"), restart_bound=8.0, stop_bound=6.0),
    Workload("celery-prefork", """[
        {"name": "celery", "target": "wlcelery:run_worker", "wait_ready": True}]""",
             "celery", ("celery", "redis"), restart_bound=8.0, stop_bound=6.0),
    Workload("celery-beat", f"""[
        {{"name": "celery", "target": "wlcelery:run_worker", "wait_ready": True}},
        {{"name": "beat", "singleton": True, "cwd": {str(APPS)!r},
          "command": [{sys.executable!r}, "-m", "celery", "-A", "wlcelery", "beat",
                      "--loglevel=INFO",
                      "--schedule", os.environ["COMPANION_STATE"] + "/beat"]}}]""",
             "beat", ("celery", "redis"), runs_jobs=False),
    Workload("django-q2", '[{"name": "qcluster", "target": "wldjango.wsgi:run_cluster"}]',
             "qcluster", ("django", "django_q", "redis"), app="wldjango.wsgi:application",
             env={"DJANGO_SETTINGS_MODULE": "wldjango.settings"}),
    Workload("apscheduler", '[{"name": "scheduler", "target": "wlapscheduler:run_scheduler"}]',
             "scheduler", ("apscheduler", "redis")),
    Workload("socketio", """[
        {"name": "socketio", "target": "wlsocketio:run_server", "wait_ready": True}]""",
             "socketio", ("socketio", "engineio", "werkzeug", "websocket", "redis"),
             ports=("WL_SOCKETIO_PORT",)),
    Workload("exec-node", """[
        {"name": "node", "target": "wlexec:run_node", "wait_ready": True}]""",
             "node", (), ports=("WL_NODE_PORT",), program="node"),
]


class Run:
    """One server of a workload, with its control socket and its jobs."""

    def __init__(self, workload: Workload, server_factory, sock_path: Path, redis):
        self.workload = workload
        self.sock = sock_path
        self.redis_url, self.redis = redis
        self.env = {"WL_REDIS_URL": self.redis_url, "WL_WORKLOAD": workload.name.split("-")[0],
                    **workload.env}
        for variable in workload.ports:
            self.env[variable] = str(free_port())
        self.srv = server_factory(self.config(), app=workload.app, env=self.env)
        self.client = None  # the Socket.IO client of the socketio workload

    def config(self) -> str:
        return "\n".join([
            f"pythonpath = {str(APPS)!r}",
            "preload_app = True",
            "workers = 1",
            f"companion_control_socket = {str(self.sock)!r}",
            f"companion_stop_timeout = {STOP_TIMEOUT}",
            "companion_startsecs = 0.3",
            "companion_restart_delay = 0.2",
            f"companion_workers = {self.workload.companions}",
        ]) + "\n"

    # -- the control CLI ----------------------------------------------------------------

    def ctl(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        done = subprocess.run([*control_command(), "-s", str(self.sock), *args],
                              capture_output=True, text=True, timeout=120)
        return done, time.monotonic() - started

    def status(self) -> dict[str, dict]:
        try:
            done, _ = self.ctl("status", "--json")
        except subprocess.TimeoutExpired:
            return {}
        if done.returncode != 0:
            return {}
        return {c["name"]: c for c in json.loads(done.stdout)["companions"]}

    def wait_running(self) -> None:
        self.srv.until(lambda: (s := self.status()) and all(
            c["state"] == "RUNNING" for c in s.values()), message="every companion RUNNING")

    # -- jobs -----------------------------------------------------------------------

    def done(self, token: str) -> bool:
        return (self.srv.state / f"{token}.done").exists()

    def started(self, token: str) -> bool:
        return (self.srv.state / f"{token}.started").exists()

    def enqueue(self, tokens: list[str], seconds: float = 0) -> None:
        """The web request that hands the jobs over."""
        query = "&".join(f"token={t}" for t in tokens) + f"&seconds={seconds}"
        reply = self.srv.http_get(f"/enqueue?{query}")
        assert reply.startswith(b"HTTP/1.1 200") or reply.startswith(b"HTTP/1.0 200"), (
            f"GET /enqueue answered {reply[:300]!r}\n{self.srv.log()}")

    def connect_client(self) -> None:
        """socketio: a client that answers each ``job`` with ``work``."""
        import socketio

        self.disconnect_client()
        client = socketio.Client(reconnection=False)
        client.on("job", lambda data: client.emit("work", data))

        def connect():
            try:
                client.connect(f"http://127.0.0.1:{self.env['WL_SOCKETIO_PORT']}",
                               transports=["websocket"], wait_timeout=5)
            except socketio.exceptions.ConnectionError:
                return False
            return True

        self.srv.until(connect, message="a Socket.IO connection to the companion")
        self.client = client
        # The server subscribes to Redis on its first client: publish only then.
        self.srv.until(lambda: dict(self.redis.pubsub_numsub("wl-socketio")).get(b"wl-socketio"),
                       message="the Socket.IO companion to subscribe to Redis")

    def disconnect_client(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client = None

    def hand_over(self, count: int = 1, seconds: float = 0) -> list[str]:
        tokens = [uuid.uuid4().hex for _ in range(count)]
        if self.workload.name == "socketio":
            self.connect_client()  # a new one: a restart ended the last one
        if self.workload.name == "exec-node":
            # The web request waits for node's answer: send it from a thread.
            threading.Thread(target=self.enqueue, args=(tokens, seconds), daemon=True).start()
        else:
            self.enqueue(tokens, seconds)
        return tokens

    def jobs_complete(self, count: int = 1) -> None:
        """Jobs handed over by a web request complete (and, for beat, a new tick)."""
        since = time.time()
        tokens = self.hand_over(count)
        self.srv.until(lambda: all(self.done(t) for t in tokens), JOB_DEADLINE,
                       message=f"{count} job(s) of {self.workload.name} to complete")
        if self.workload.cycled == "beat":
            self.srv.until(lambda: any(p.stat().st_mtime >= since
                                       for p in self.srv.state.glob("tick-*.done")),
                           JOB_DEADLINE, message="a tick sent by celery beat to complete")

    # -- checks ---------------------------------------------------------------------

    def graceful(self) -> list[str]:
        """What the log shows that was not graceful (empty when all was)."""
        return [line for line in self.srv.log().splitlines()
                if SIGKILL_LINE in line or UNEXPECTED_LINE in line
                or "did not stop in" in line]

    def cleanup(self) -> None:
        self.disconnect_client()


@pytest.fixture(params=WORKLOADS, ids=[w.name for w in WORKLOADS])
def workload(request):
    workload: Workload = request.param
    missing = [m for m in workload.modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[workloads]'")
    if workload.program and not shutil.which(workload.program):
        pytest.skip(f"{workload.program} is not on PATH (apt-get install nodejs)")
    return workload


@pytest.fixture
def run(workload, server, sock_path, redis_db):
    runs = []

    def start() -> Run:
        runs.append(Run(workload, server, sock_path, redis_db))
        return runs[-1]

    yield start
    for one in runs:
        one.cleanup()


def test_jobs_complete_across_restarts_and_stops(run, workload, timings):
    r = run()
    r.wait_running()
    r.jobs_complete(3)
    bounds = {"restart": workload.restart_bound, "stop": workload.stop_bound,
              "start": workload.start_bound}
    problems = []
    for commands in (("restart",), ("stop", "start")):
        for cycle in range(CYCLES):
            # A job in flight at each restart and stop: it must finish before
            # the companion exits, so it is done when the command returns.
            token, = r.hand_over(1, IN_CYCLE_SECONDS)
            r.srv.until(lambda token=token: r.started(token), JOB_DEADLINE,
                        message="the job in flight to start")
            for command in commands:
                done, took = r.ctl(command, workload.cycled)
                timings(workload.name, command, took)
                label = f"{command} {cycle + 1}/{CYCLES}"
                if done.returncode != 0:
                    problems.append(f"{label}: exit {done.returncode}: {done.stderr.strip()}")
                elif took > bounds[command]:
                    problems.append(f"{label}: took {took:.2f}s, over the "
                                    f"{bounds[command]:g}s bound")
                if command != "start" and workload.runs_jobs and not r.done(token):
                    problems.append(f"{label}: the job in flight was lost")
            r.jobs_complete()
    bad_lines = r.graceful()
    failed = len({p.split(":")[0] for p in problems})
    assert not problems and not bad_lines, (
        f"{workload.name}: {failed} of {3 * CYCLES} restarts, stops and starts failed, lost "
        f"their job in flight or were slow:\n" + "\n".join(problems)
        + "\nnot graceful:\n" + "\n".join(bad_lines) + f"\n--- server log ---\n{r.srv.log()}")


def test_jobs_in_flight_at_master_sigterm_complete(run, workload, timings):
    r = run()
    r.wait_running()
    r.jobs_complete()
    # Two jobs: one for each pool process where the workload has a pool.
    tokens = r.hand_over(2, IN_FLIGHT_SECONDS)
    r.srv.until(lambda: all(r.started(t) for t in tokens), JOB_DEADLINE,
                message="both slow jobs to start")
    r.srv.tree()  # note the manager's session while the master leads it
    started = time.monotonic()
    r.srv.signal(signal.SIGTERM)
    code = r.srv.wait_exit(timeout=STOP_TIMEOUT * 4)
    timings(workload.name, "master SIGTERM", time.monotonic() - started)
    wait_until(lambda: not r.srv.tree(), 10, message="every process of the tree to exit")
    lost = [t for t in tokens if not r.done(t)]
    assert code == 0 and not lost and not r.graceful(), (
        f"{workload.name}: master exited {code}; {len(lost)} of {len(tokens)} jobs in flight "
        f"lost; not graceful: {r.graceful()}\n--- server log ---\n{r.srv.log()}")


@pytest.mark.parametrize("victim", ["master", "manager"])
def test_sigkill_leaves_nothing_behind(run, workload, victim):
    r = run()
    r.wait_running()
    r.jobs_complete()
    manager = r.srv.wait_manager()
    # The manager leads a session of its own, with every companion in it.
    old = [p for p in r.srv.tree() if (fields := proc_stat(p)) and int(fields[3]) == manager]
    assert manager in old and len(old) > 1, old
    os.kill(r.srv.pid if victim == "master" else manager, signal.SIGKILL)
    r.srv.watch_exit = victim != "master"

    def left() -> list[int]:
        return r.srv.tree() if victim == "master" else [p for p in old if alive(p)]

    try:
        wait_until(lambda: not left(), STOP_TIMEOUT * 3,
                   message=f"the processes of {workload.name} to exit after the {victim}'s "
                           "SIGKILL")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; left: {left()}\n--- server log ---\n{r.srv.log()}")
    if victim == "master":
        return
    # A new manager starts the companions again, and they work.
    r.srv.wait_manager(other_than=manager)
    r.wait_running()
    r.jobs_complete()
