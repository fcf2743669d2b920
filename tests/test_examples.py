"""The examples that need Redis, end to end: examples/rq, examples/celery, examples/socketio.

Each test starts ``gunicorn-companion serve -c examples/X/gunicorn.conf.py`` as a
real process tree in its own session, against a real ``redis-server`` (the
``redis_url`` fixture of tests/redis_server.py, one per module, a database per
example), drives it the way a user would (HTTP requests, the RQ and Socket.IO
clients, the control CLI), then stops it with SIGTERM and checks that the whole
tree is gone. Whatever happens, every process of the tree is killed at the end.

Skipped when ``redis-server`` is not installed (``apt-get install redis-server``)
or when the examples' libraries are not (``pip install -e '.[examples]'``).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis_server import redis_url  # noqa: F401  (the fixture)
from support import control_command, free_port, live_tree, short_socket_path, terminate_tree

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EXTRA_HINT = "pip install -e '.[examples]'"

DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 20.0
POLL_SECONDS = 0.05

T = TypeVar("T")


def _requires(*modules: str) -> pytest.MarkDecorator:
    """Skip the test unless every module is importable (checked before Redis starts)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"{', '.join(missing)} not installed: {EXTRA_HINT} to run this example",
    )


def _poll(predicate: Callable[[], T | None], what: str, timeout: float = DEADLINE_SECONDS,
          describe: Callable[[], str] = lambda: "") -> T:
    """Call ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{describe()}")
        time.sleep(POLL_SECONDS)


class Example:
    """One ``gunicorn-companion serve`` of an example, in a session of its own."""

    def __init__(self, name: str, tmp_path: Path, env: dict[str, str]):
        self.name = name
        self.conf = EXAMPLES / name / "gunicorn.conf.py"
        self.port = free_port()
        self.log_path = tmp_path / f"{name}.log"
        self.env = dict(
            os.environ,
            EXAMPLE_BIND=f"127.0.0.1:{self.port}",
            PYTHONUNBUFFERED="1",
            # Gunicorn >= 27's control socket and the singleton locks go in
            # $XDG_RUNTIME_DIR: keep this run's apart from any other.
            XDG_RUNTIME_DIR=str(tmp_path),
            **env,
        )
        self.env.pop("GUNICORN_CMD_ARGS", None)
        self.cwd = tmp_path  # not the repo: the config's pythonpath must find the code
        self.proc: subprocess.Popen | None = None
        self.sessions: set[int] = set()

    def start(self) -> Example:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*control_command(), "serve", "-c", str(self.conf)],
                cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # the master leads its own session
            )
        self.sessions.add(self.proc.pid)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self, tail: int = 200) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-tail:])

    def explain(self, message: str) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"exited with code {code}"
        return f"{message}\n--- {self.name} example (master {self.pid}, {state}) ---\n{self.log()}"

    def wait_for(self, predicate: Callable[[], T | None], what: str,
                 timeout: float = DEADLINE_SECONDS) -> T:
        """Poll ``predicate``, failing at once if the master exits meanwhile.

        Connection errors count as "not yet": the server may still be booting.
        """

        def attempt():
            if self.proc.poll() is not None:
                pytest.fail(self.explain(f"the master exited while waiting for {what}"))
            try:
                return predicate()
            except (OSError, http.client.HTTPException):
                return None

        return _poll(attempt, what, timeout, describe=lambda: "\n" + self.explain(""))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """An HTTP request to the web app; a JSON body out, the decoded JSON (or text) back."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(data)
        return response.status, data.decode("utf-8", "replace")

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, self.explain(f"GET {path} answered {status}: {body!r}")
        return body

    def tree(self) -> list[int]:
        """Every live process of this run, however deep (see support.live_tree)."""
        return live_tree(self.sessions)

    def stop(self) -> None:
        """SIGTERM to the master: it must exit 0 and take the whole tree with it."""
        self.tree()  # note the manager's session while the master still leads
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(self.explain(f"the master did not exit within {STOP_DEADLINE_SECONDS:g}s "
                                     "of SIGTERM"))
        assert code == 0, self.explain(f"the master exited with code {code} after SIGTERM")
        # The master has reaped its children; a companion's own child may take a moment.
        _poll(lambda: not self.tree(), "every process of the tree to exit", timeout=5,
              describe=lambda: f"; left: {self.tree()}\n" + self.explain(""))

    def cleanup(self) -> None:
        """SIGTERM, then SIGKILL for whatever is left of the tree, whatever happened."""
        if self.proc is not None:
            terminate_tree(self.proc, self.tree, grace=10)


@pytest.fixture
def example(tmp_path):
    """Factory: ``example(name, env)`` -> a started Example, always cleaned up."""
    started: list[Example] = []

    def start(name: str, env: dict[str, str]) -> Example:
        run = Example(name, tmp_path, env)
        started.append(run)
        return run.start()

    yield start
    for run in started:
        run.cleanup()


def _no_tracebacks(run: Example) -> None:
    log = run.log(tail=100_000)
    assert "Traceback" not in log, run.explain("the log shows an exception")


# -- examples/rq -----------------------------------------------------------------


@_requires("rq", "redis", "flask", "apscheduler")
def test_rq_example(example, redis_url):  # noqa: F811 (the fixture)
    from redis import Redis
    from rq import Worker
    from rq.job import Job

    url = f"{redis_url}/1"
    run = example("rq", {"REDIS_URL": url, "RQ_EXAMPLE_TICK_SECONDS": "0.3"})
    run.wait_for(lambda: run.get_json("/"), "the web app to answer")
    connection = Redis.from_url(url)
    try:
        # A job from an HTTP request to a worker companion and back.
        status, body = run.request("POST", "/jobs", {"text": "The cat saw the other cat. The end"})
        assert status == 202, run.explain(f"POST /jobs answered {status}: {body!r}")
        job_id = body["id"]
        job = run.wait_for(
            lambda: (j := run.get_json(f"/jobs/{job_id}"))["status"] == "finished" and j,
            f"job {job_id} to finish")
        assert job["result"] == {"words": 8, "top": [["the", 3], ["cat", 2], ["saw", 1]]}, (
            run.explain(f"the job's result: {job}"))
        worker_name = re.compile(r"rq-worker:([01])\.(\d+)")
        assert worker_name.fullmatch(job["worker"] or ""), run.explain(f"ran by {job['worker']}")
        assert Job.fetch(job_id, connection=connection).return_value() == job["result"]

        # Both instances of the worker companion are registered in Redis, as live
        # processes of this tree, named after GUNICORN_COMPANION_NAME/INSTANCE.
        def both_workers():
            found = {w.name: w for w in Worker.all(connection=connection)}
            return found if len(found) == 2 else None

        workers = run.wait_for(both_workers, "two RQ workers in Redis")
        matches = [worker_name.fullmatch(name) for name in sorted(workers)]
        assert all(matches) and [m.group(1) for m in matches] == ["0", "1"], run.explain(
            f"RQ workers: {sorted(workers)}")
        tree = run.tree()
        for name, worker in workers.items():
            assert worker.pid in tree and int(worker_name.fullmatch(name).group(2)) == worker.pid, (
                run.explain(f"worker {name} (pid {worker.pid}) should be in the tree {tree}"))

        # The singleton scheduler's periodic job ran, in a worker companion, repeatedly.
        ticks = run.wait_for(lambda: (t := run.get_json("/ticks"))["count"] >= 3 and t,
                             "the periodic job to run three times")
        assert ticks["last_worker"] in workers, run.explain(f"ticks: {ticks}")
        assert abs(time.time() - ticks["last_at"]) < 30, run.explain(f"ticks: {ticks}")

        # SIGTERM: RQ's warm shutdown deregisters both workers on the way out.
        run.stop()
        assert Worker.all(connection=connection) == [], run.explain("RQ workers still registered")
        log = run.log(tail=100_000)
        schedulers = set(re.findall(r"scheduler (\d+): enqueued tick", log))
        assert len(schedulers) == 1, run.explain(f"ticks enqueued by schedulers {schedulers}")
        assert f"scheduler {schedulers.pop()}: SIGTERM received, exiting" in log, run.explain(
            "the scheduler should stop on SIGTERM")
        _no_tracebacks(run)
    finally:
        connection.close()


# -- examples/celery ---------------------------------------------------------------


def _status(socket_path: Path) -> dict[str, dict]:
    done = subprocess.run([*control_command(), "-s", str(socket_path), "status", "--json"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return {}
    return {c["name"]: c for c in json.loads(done.stdout)["companions"]}


@_requires("celery", "redis", "flask")
def test_celery_example(example, redis_url):  # noqa: F811 (the fixture)
    control = short_socket_path("celery.sock")  # AF_UNIX paths are short; tmp_path may not be
    try:
        run = example("celery", {
            "REDIS_URL": f"{redis_url}/2",
            "GUNICORN_COMPANION_SOCKET": str(control),
            "CELERY_EXAMPLE_PRELOAD_WORKER": "1",
        })
        # wait_ready: RUNNING only once each Celery worker is consuming.
        names = ("celery-exec", "celery-forked")
        companions = run.wait_for(
            lambda: (s := _status(control)) and all(
                s.get(name, {}).get("state") == "RUNNING" for name in names) and s,
            "both Celery companions to be RUNNING (ready)")
        assert companions["celery-exec"]["command"][1:4] == ["-m", "celery", "-A"], companions
        assert companions["celery-forked"]["target"] == "tasks:run_worker", companions

        # One task to each queue, through the web app; each worker answers its own.
        ids = {}
        for queue_name, (x, y) in (("exec", (2, 3)), ("forked", (40, 2))):
            status, body = run.request("POST", "/tasks", {"queue": queue_name, "x": x, "y": y})
            assert status == 202, run.explain(f"POST /tasks answered {status}: {body!r}")
            ids[queue_name] = body["id"]
        results = {
            queue_name: run.wait_for(
                lambda task_id=task_id: (t := run.get_json(f"/tasks/{task_id}"))["state"]
                == "SUCCESS" and t["result"],
                f"the {queue_name} task to succeed")
            for queue_name, task_id in ids.items()
        }
        assert results["exec"]["sum"] == 5 and results["forked"]["sum"] == 42, results
        for queue_name in ("exec", "forked"):
            companion = companions[f"celery-{queue_name}"]
            assert results[queue_name]["worker"].startswith(f"{queue_name}@"), results
            # exec keeps the pid: the task ran in the companion process itself
            assert results[queue_name]["pid"] == companion["pid"], run.explain(
                f"the {queue_name} task ran in pid {results[queue_name]['pid']}, "
                f"the companion is {companion['pid']}")

        # memory.py finds both companions through the control socket and measures them.
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "celery" / "memory.py"), "--json"],
            capture_output=True, text=True, timeout=60, env=run.env)
        assert done.returncode == 0, done.stderr
        memory = {row["name"]: row for row in json.loads(done.stdout)}
        assert {"celery-exec", "celery-forked", "(manager)", "(master)"} <= set(memory), memory
        for row in memory.values():
            assert row["rss_kib"] >= row["pss_kib"] >= row["uss_kib"] > 0, row
        figures = ", ".join(f"{name}: PSS {row['pss_kib'] / 1024:.1f}M USS "
                            f"{row['uss_kib'] / 1024:.1f}M" for name, row in memory.items())
        print(f"celery example memory: {figures}")
        # The point of the example: the forked worker shares what the master loaded.
        assert memory["celery-forked"]["uss_kib"] < memory["celery-exec"]["uss_kib"], figures

        run.stop()
        log = run.log(tail=100_000)
        for hostname in ("exec@", "forked@"):
            assert re.search(rf"{hostname}\S* ready\.", log), run.explain(f"no {hostname} ready")
        _no_tracebacks(run)
    finally:
        shutil.rmtree(control.parent, ignore_errors=True)


# -- examples/socketio -------------------------------------------------------------


@_requires("socketio", "engineio", "simple_websocket", "websocket", "requests", "redis", "flask")
def test_socketio_example(example, redis_url):  # noqa: F811 (the fixture)
    import socketio
    from redis import Redis

    url = f"{redis_url}/3"
    sio_port = free_port()
    run = example("socketio", {"REDIS_URL": url, "SOCKETIO_BIND": f"127.0.0.1:{sio_port}"})
    run.wait_for(lambda: run.request("GET", "/")[0] == 200, "the web app to answer")

    events: queue.Queue = queue.Queue()
    client = socketio.Client(reconnection=False)
    client.on("welcome", lambda data: events.put(("welcome", data)))
    client.on("announcement", lambda data: events.put(("announcement", data)))

    def next_event(kind: str) -> dict:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, data = events.get(timeout=min(left, 1.0))
            except queue.Empty:
                if run.proc.poll() is not None:
                    break
                continue
            if got == kind:
                return data
        pytest.fail(run.explain(f"no {kind!r} event within {DEADLINE_SECONDS:g}s"))

    def connect():
        try:
            # WebSocket only: no fallback to long polling that would hide a broken upgrade.
            client.connect(f"http://127.0.0.1:{sio_port}", transports=["websocket"],
                           wait_timeout=5)
        except socketio.exceptions.ConnectionError:
            return None
        return True

    connection = Redis.from_url(url)
    try:
        run.wait_for(connect, "a Socket.IO connection to the companion")
        assert client.transport() == "websocket"
        welcome = next_event("welcome")
        assert welcome["server_pid"] in run.tree() and welcome["server_pid"] != run.pid, (
            run.explain(f"the Socket.IO server should be a companion: {welcome}"))
        # The server subscribes to Redis when its first client connects; pub/sub
        # keeps nothing for later, so publish only once it listens.
        run.wait_for(lambda: dict(connection.pubsub_numsub("sioexample")).get(b"sioexample"),
                     "the Socket.IO companion to subscribe to the Redis channel")

        # A web request emits; the companion delivers the event to the client.
        status, body = run.request("POST", "/api/announce", {"message": "hello from the web"})
        assert status == 202, run.explain(f"POST /api/announce answered {status}: {body!r}")
        event = next_event("announcement")
        assert event["message"] == "hello from the web" and event["room"] is None, event
        assert event["web_pid"] in run.tree() and event["web_pid"] != welcome["server_pid"], (
            run.explain(f"the event should come from an HTTP worker: {event}"))

        # To a room: the client joins it (a call with an acknowledgement), then gets it.
        assert client.call("join", {"room": "news"}, timeout=10) == {"ok": True, "room": "news"}
        status, body = run.request("POST", "/api/announce", {"message": "extra", "room": "news"})
        assert status == 202, run.explain(f"POST /api/announce answered {status}: {body!r}")
        event = next_event("announcement")
        assert event["message"] == "extra" and event["room"] == "news", event

        # The page tells the browser where the Socket.IO companion is.
        status, page = run.request("GET", "/")
        assert status == 200 and f':{sio_port}"' in page, run.explain(page)

        client.disconnect()
        run.stop()
        log = run.log(tail=100_000)
        assert "SIGTERM received, exiting" in log, run.explain("the companion should log its stop")
        assert "Bad request" not in log, run.explain("the Socket.IO server logged a bad request")
        _no_tracebacks(run)
    finally:
        client.disconnect()
        connection.close()
