"""The demo in examples/demo: its parts on their own, then the whole process tree.

The part tests import the demo's package directly and need nothing but the
standard library: the WSGI app is called in-process, the companion targets run in
forked children against a temporary database.

The end-to-end test starts ``gunicorn-companion serve -c examples/demo/gunicorn.conf.py``
as a real process tree, drives it through the JSON API, and checks that SIGTERM to
the master takes the whole tree down cleanly.
"""

from __future__ import annotations

import http.client
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from support import short_socket_path

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "examples" / "demo"
CONF = DEMO_DIR / "gunicorn.conf.py"

DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.05

T = TypeVar("T")


# -- helpers -------------------------------------------------------------------


def _poll(
    predicate: Callable[[], T | None],
    what: str,
    timeout: float = DEADLINE_SECONDS,
    describe: Callable[[], str] = lambda: "",
) -> T:
    """Call ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{describe()}")
        time.sleep(POLL_SECONDS)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) from /proc/PID/stat, or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain them.
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie (exited, not yet reaped) counts as gone."""
    if os.path.isdir("/proc"):
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ancestors(pid: int) -> list[int]:
    """The parent chain of ``pid`` up to pid 1 (Linux only: reads /proc)."""
    chain = []
    while pid > 1 and len(chain) < 64:
        stat = _proc_stat(pid)
        if stat is None:
            break
        pid = stat[1]
        chain.append(pid)
    return chain


def _session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, state) of every live process in session ``sid`` (Linux only)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[2] == sid and stat[0] not in ("Z", "X"):
                members.append((int(entry), stat[0]))
    return members


# -- the parts: import the demo package ------------------------------------------


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The demo's modules, with DEMO_DB pointing at a fresh database in tmp_path."""
    monkeypatch.setenv("DEMO_DB", str(tmp_path / "var" / "demo.sqlite3"))
    monkeypatch.setenv("DEMO_HEARTBEAT_SECONDS", "0.1")
    monkeypatch.syspath_prepend(str(DEMO_DIR))
    # Drop a different module that happens to be called `demo`, if one was imported.
    loaded = sys.modules.get("demo")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(DEMO_DIR)):
        for name in [n for n in sys.modules if n == "demo" or n.startswith("demo.")]:
            monkeypatch.delitem(sys.modules, name)
    from demo import db, tasks, web

    return SimpleNamespace(db=db, tasks=tasks, web=web, path=tmp_path / "var" / "demo.sqlite3")


def _call(app, method: str, path: str, body: bytes = b"", content_type: str | None = None):
    """Call the WSGI app (checked by wsgiref's validator); return (status, headers, body)."""
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(
        REQUEST_METHOD=method,
        PATH_INFO=path,
        QUERY_STRING="",
        CONTENT_LENGTH=str(len(body)),
        **{"wsgi.input": io.BytesIO(body)},
    )
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    response: dict = {}

    def start_response(status, headers, exc_info=None):
        response["status"] = int(status.split()[0])
        response["headers"] = dict(headers)
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        result.close()
    return response["status"], response["headers"], data


def test_fibonacci(demo):
    fib = demo.tasks.fibonacci
    assert [fib(n) for n in range(10)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
    assert fib(12) == 144
    assert fib(demo.tasks.MAX_N) == 2880067194370816120 < 2**63
    with pytest.raises(ValueError):
        fib(-1)


def test_database_is_created_in_wal_mode(demo):
    assert not demo.path.exists()
    conn = demo.db.connect()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    finally:
        conn.close()
    assert demo.path.exists()  # and its directory was created
    demo.db.connect().close()  # a second connection finds the tables in place


def test_api_enqueues_jobs_from_json_and_forms(demo):
    app = demo.web.app
    status, headers, body = _call(app, "GET", "/api/state")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"jobs": [], "heartbeat": None}

    status, _, body = _call(app, "POST", "/api/jobs", b'{"n": 12}', "application/json")
    assert (status, json.loads(body)) == (201, {"id": 1})
    status, _, body = _call(app, "POST", "/api/jobs", b"n=30", "application/x-www-form-urlencoded")
    assert (status, json.loads(body)) == (201, {"id": 2})
    # curl -d '{"n": 5}' without -H sends JSON labelled as a form
    status, _, body = _call(
        app, "POST", "/api/jobs", b'{"n": 5}', "application/x-www-form-urlencoded"
    )
    assert (status, json.loads(body)) == (201, {"id": 3})

    state = json.loads(_call(app, "GET", "/api/state")[2])
    assert [(job["id"], job["n"], job["status"]) for job in state["jobs"]] == [
        (3, 5, "queued"),
        (2, 30, "queued"),
        (1, 12, "queued"),
    ]
    assert set(state["jobs"][0]) == {
        "id",
        "n",
        "status",
        "result",
        "worker_pid",
        "created_at",
        "started_at",
        "finished_at",
    }


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b'{"n": 91}', "application/json"),
        (b'{"n": -1}', "application/json"),
        (b'{"n": true}', "application/json"),
        (b'{"n": 1.5}', "application/json"),
        (b'{"m": 1}', "application/json"),
        (b"[12]", "application/json"),
        (b"{not json", "application/json"),
        (b"n=abc", "application/x-www-form-urlencoded"),
        (b"n=", "application/x-www-form-urlencoded"),
        (b"", "application/x-www-form-urlencoded"),
        (b"n=\xff", "application/x-www-form-urlencoded"),
    ],
)
def test_api_rejects_bad_input(demo, body, content_type):
    status, headers, data = _call(demo.web.app, "POST", "/api/jobs", body, content_type)
    assert status == 400, data
    assert headers["Content-Type"] == "application/json"
    assert json.loads(data)["error"]
    assert json.loads(_call(demo.web.app, "GET", "/api/state")[2])["jobs"] == []


def test_unknown_paths_and_methods(demo):
    assert _call(demo.web.app, "GET", "/nope")[0] == 404
    status, headers, _ = _call(demo.web.app, "GET", "/api/jobs")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = _call(demo.web.app, "DELETE", "/")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = _call(demo.web.app, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_form_redirects_and_page_shows_jobs_and_heartbeat(demo):
    app = demo.web.app
    status, headers, _ = _call(app, "POST", "/jobs", b"n=7", "application/x-www-form-urlencoded")
    assert status == 303 and headers["Location"] == "/"
    status, _, bad = _call(app, "POST", "/jobs", b"n=100", "application/x-www-form-urlencoded")
    assert status == 400 and b"from 0 to 90" in bad

    page = _call(app, "GET", "/")[2].decode()
    assert '<form method="post" action="/jobs">' in page
    assert 'id="job-1"' in page and "queued" in page
    assert "No heartbeat yet" in page

    conn = demo.db.connect()
    try:
        job = demo.db.claim_next_job(conn, pid=4321)
        demo.db.finish_job(conn, job.id, demo.tasks.fibonacci(job.n))
        demo.db.record_heartbeat(conn, pid=8765)
        demo.db.record_heartbeat(conn, pid=8765)
    finally:
        conn.close()
    page = _call(app, "GET", "/")[2].decode()
    row = re.search(r'<tr id="job-1".*?</tr>', page).group(0)
    assert ">done<" in row and ">13<" in row and ">4321<" in row
    heartbeat = re.search(r'<p id="heartbeat".*?</p>', page, re.DOTALL).group(0)
    assert ">8765<" in heartbeat and "#2" in heartbeat and "s ago" in heartbeat


def _wait_exit(process, timeout: float) -> float:
    """Join a multiprocessing child; return how long it took."""
    started = time.monotonic()
    process.join(timeout)
    return time.monotonic() - started


def _rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_worker_runs_jobs_and_stops_on_sigterm(demo, measured):
    conn = demo.db.connect()
    try:
        ids = [demo.db.enqueue_job(conn, n) for n in range(20)]
    finally:
        conn.close()
    worker = multiprocessing.get_context("fork").Process(target=demo.tasks.run_worker)
    worker.start()
    try:
        done = "SELECT id, n, result, worker_pid FROM jobs WHERE status = 'done' ORDER BY id"
        _poll(lambda: len(_rows(demo.path, done)) == len(ids), "the worker to finish all jobs")
        rows = _rows(demo.path, done)
        assert [row[0] for row in rows] == ids
        assert all(row[2] == demo.tasks.fibonacci(row[1]) for row in rows)
        assert {row[3] for row in rows} == {worker.pid}

        # Idle now: it must notice SIGTERM (within a second: reported) and return 0.
        os.kill(worker.pid, signal.SIGTERM)
        took = _wait_exit(worker, 30)
        assert worker.exitcode == 0, (worker.exitcode, took)
        measured("demo worker: exit after SIGTERM", took)
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join()


def _first_use(path: str, barrier) -> None:
    """In a child: open a database that may not exist yet, at the same moment as others."""
    from demo import db

    barrier.wait()
    conn = db.connect(path)  # an exception shows in the output and exits with code 1
    db.enqueue_job(conn, 1)
    db.record_heartbeat(conn, os.getpid())
    conn.close()


def test_processes_can_all_create_the_database_at_once(demo, tmp_path):
    # At boot every companion and web worker may open a database that does not exist
    # yet; none of them may fail with "database is locked".
    context = multiprocessing.get_context("fork")
    for attempt in range(25):
        path = str(tmp_path / f"race{attempt}" / "demo.sqlite3")
        barrier = context.Barrier(8)
        processes = [context.Process(target=_first_use, args=(path, barrier)) for _ in range(8)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(30)
        assert [process.exitcode for process in processes] == [0] * 8, f"attempt {attempt}"
        assert _rows(Path(path), "SELECT count(*) FROM jobs") == [(8,)]
        assert _rows(Path(path), "SELECT count FROM heartbeat") == [(8,)]


def _claim_all(queue) -> None:
    """In a child: claim jobs until none is left; report the ids."""
    from demo import db

    conn = db.connect()
    claimed = []
    while (job := db.claim_next_job(conn, os.getpid())) is not None:
        claimed.append(job.id)
    conn.close()
    queue.put(claimed)


def test_two_claimers_never_take_the_same_job(demo):
    conn = demo.db.connect()
    try:
        ids = [demo.db.enqueue_job(conn, n % 50) for n in range(300)]
    finally:
        conn.close()
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    claimers = [context.Process(target=_claim_all, args=(queue,)) for _ in range(4)]
    for process in claimers:
        process.start()
    try:
        claimed = [queue.get() for _ in claimers]
    finally:
        for process in claimers:
            process.join(10)
    flat = [job_id for batch in claimed for job_id in batch]
    assert sorted(flat) == ids  # every job claimed, none twice
    assert [process.exitcode for process in claimers] == [0] * len(claimers)


def _heartbeat(path: Path) -> tuple[int, int] | None:
    """(count, pid) of the heartbeat row; None while there is no database, table or row."""
    if not path.exists():
        return None
    try:
        rows = _rows(path, "SELECT count, pid FROM heartbeat")
    except sqlite3.OperationalError:  # the scheduler is still creating the tables
        return None
    return rows[0] if rows else None


def test_scheduler_beats_and_stops_on_sigterm(demo, measured):
    # No database yet: the scheduler creates it.
    scheduler = multiprocessing.get_context("fork").Process(target=demo.tasks.run_scheduler)
    scheduler.start()
    try:
        _poll(lambda: (_heartbeat(demo.path) or (0, 0))[0] >= 3, "three heartbeats")
        assert _heartbeat(demo.path)[1] == scheduler.pid

        os.kill(scheduler.pid, signal.SIGTERM)
        took = _wait_exit(scheduler, 30)
        assert scheduler.exitcode == 0, (scheduler.exitcode, took)
        measured("demo scheduler: exit after SIGTERM", took)
    finally:
        if scheduler.is_alive():
            scheduler.kill()
            scheduler.join()


def test_heartbeat_seconds_is_validated(demo, monkeypatch):
    monkeypatch.delenv("DEMO_HEARTBEAT_SECONDS")
    assert demo.tasks.heartbeat_seconds() == 2.0
    monkeypatch.setenv("DEMO_HEARTBEAT_SECONDS", "0.5")
    assert demo.tasks.heartbeat_seconds() == 0.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv("DEMO_HEARTBEAT_SECONDS", bad)
        with pytest.raises(ValueError, match="DEMO_HEARTBEAT_SECONDS"):
            demo.tasks.heartbeat_seconds()


# -- the whole tree: gunicorn-companion serve ------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoServer:
    """A running ``gunicorn-companion serve`` of the demo, and ways to talk to it."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def log(self, tail: int = 300) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(lines[-tail:])

    def explain(self, message: str) -> str:
        """``message`` plus the server's log, for assertion messages."""
        code = self.proc.poll()
        state = "still running" if code is None else f"exited with code {code}"
        return (
            f"{message}\n--- server (pid {self.proc.pid}, {state}); "
            f"log {self.log_path} ---\n{self.log()}"
        )

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict, bytes]:
        # http.client directly: no proxy from the environment, no redirect following.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def state(self) -> dict:
        status, _, body = self.request("GET", "/api/state")
        assert status == 200, self.explain(f"GET /api/state answered {status}: {body!r}")
        return json.loads(body)

    def wait_for(self, predicate: Callable[[], T | None], what: str) -> T:
        """Poll ``predicate`` (up to 30 s); fail at once if the server exits meanwhile."""

        def attempt():
            if self.proc.poll() is not None:
                pytest.fail(self.explain(f"the server exited while waiting for {what}"))
            try:
                return predicate()
            except (TimeoutError, ConnectionError, http.client.HTTPException):
                return None  # not listening yet, or a worker is restarting

        return _poll(attempt, what, describe=lambda: "\n" + self.explain(""))


def test_demo_end_to_end(tmp_path):
    executable = os.path.join(os.path.dirname(sys.executable), "gunicorn-companion")
    if not os.path.exists(executable):
        pytest.skip(
            f"{executable} does not exist: install the package into this Python "
            "(pip install -e .) to run the demo end to end"
        )
    port = _free_port()
    db_file = tmp_path / "demo.sqlite3"
    log_path = tmp_path / "server.log"
    control_socket = short_socket_path("demo.sock")
    env = dict(
        os.environ,
        DEMO_BIND=f"127.0.0.1:{port}",
        DEMO_DB=str(db_file),
        DEMO_HEARTBEAT_SECONDS="0.5",
        PYTHONUNBUFFERED="1",
        # Gunicorn >= 27 puts its control socket in $XDG_RUNTIME_DIR (else ~/.gunicorn/):
        # keep this run's apart from any other Gunicorn on the machine.
        XDG_RUNTIME_DIR=str(tmp_path),
        # its own control socket, not the one in examples/demo/var/ that `make demo` uses
        DEMO_CONTROL_SOCKET=str(control_socket),
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [executable, "serve", "-c", str(CONF)],
            cwd=tmp_path,  # not the repo: the config's pythonpath must find `demo`
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group, led by the master
        )
    server = DemoServer(proc, port, log_path)
    master = proc.pid
    linux = os.path.isdir("/proc")
    try:
        server.wait_for(server.state, "/api/state to answer")

        # A job, from the API to the worker companion and back.
        status, _, body = server.request(
            "POST",
            "/api/jobs",
            json.dumps({"n": 12}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 201, server.explain(f"POST /api/jobs answered {status}: {body!r}")
        job_id = json.loads(body)["id"]

        def job_done():
            jobs = [job for job in server.state()["jobs"] if job["id"] == job_id]
            return jobs[0] if jobs and jobs[0]["status"] == "done" else None

        job = server.wait_for(job_done, f"job {job_id} to be done")
        worker_pid = job["worker_pid"]
        assert job["result"] == 144, server.explain(f"fib(12) is 144, the job says {job}")
        assert isinstance(worker_pid, int) and worker_pid != master, server.explain(
            f"the job should be run by a companion, not the master (pid {master}): {job}"
        )
        assert job["created_at"] <= job["started_at"] <= job["finished_at"], server.explain(
            str(job)
        )

        # The CLI finds the control socket in the demo's config file.
        cli = subprocess.run([executable, "-c", str(CONF), "status"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert cli.returncode == 0 and "worker" in cli.stdout, server.explain(str(cli))
        check = server.wait_for(
            lambda: (r := subprocess.run([executable, "-c", str(CONF), "check"], env=env,
                                         capture_output=True, text=True, timeout=60,
                                         check=False)).returncode == 0 and r,
            "check to exit 0")
        assert check.stdout == "OK: 2/2 companions RUNNING\n", server.explain(str(check))

        # The HTML form: 303 back to the page.
        status, headers, body = server.request(
            "POST", "/jobs", b"n=5", {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 303 and headers.get("Location") == "/", server.explain(
            f"POST /jobs answered {status} {headers}: {body!r}"
        )

        # The scheduler companion's heartbeat counts up.
        first = server.wait_for(lambda: server.state()["heartbeat"], "a first heartbeat")
        beat = server.wait_for(
            lambda: (hb := server.state()["heartbeat"]) and hb["count"] > first["count"] and hb,
            f"the heartbeat count to go past {first['count']}",
        )
        scheduler_pid = beat["pid"]
        assert scheduler_pid not in (master, worker_pid), server.explain(
            f"the heartbeat should come from its own companion: {beat}"
        )
        assert abs(time.time() - beat["at"]) < 10, server.explain(f"heartbeat time: {beat}")

        if linux:
            # Both companions are live descendants of the master, in its session.
            for name, pid in (("worker", worker_pid), ("scheduler", scheduler_pid)):
                assert _alive(pid) and master in _ancestors(pid), server.explain(
                    f"the {name} companion (pid {pid}) should be a live descendant of the "
                    f"master (pid {master}); its ancestors: {_ancestors(pid)}"
                )

        # The page shows the job and the heartbeat.
        status, _, body = server.request("GET", "/")
        page = body.decode("utf-8", "replace")
        assert status == 200, server.explain(f"GET / answered {status}: {page}")
        row = re.search(rf'<tr id="job-{job_id}".*?</tr>', page)
        assert row and ">144<" in row.group(0) and f">{worker_pid}<" in row.group(0), (
            server.explain(f"the page should show job {job_id} done by {worker_pid}:\n{page}")
        )
        heartbeat = re.search(r'<p id="heartbeat".*?</p>', page, re.DOTALL)
        assert heartbeat and "Last heartbeat" in heartbeat.group(0), server.explain(
            f"the page should show the heartbeat:\n{page}"
        )

        # SIGTERM to the master: a graceful shutdown of the whole tree, exit code 0.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(server.explain(f"the master did not exit within {DEADLINE_SECONDS:g}s"))
        assert code == 0, server.explain(f"the master exited with code {code} after SIGTERM")

        recorded = {pid for (pid,) in _rows(db_file, "SELECT DISTINCT worker_pid FROM jobs")}
        recorded |= {pid for (pid,) in _rows(db_file, "SELECT pid FROM heartbeat")}
        recorded |= {worker_pid, scheduler_pid}
        recorded.discard(None)
        left = sorted(pid for pid in recorded if _alive(pid))
        assert not left, server.explain(f"companions still running after the master exited: {left}")
        if linux:
            strays = _session_members(master)
            assert not strays, server.explain(
                f"processes of the tree still running after the master exited: {strays}"
            )

        # The companions' output reaches the server's log, and both stopped on SIGTERM
        # through their handlers (not SIGKILL).
        log = server.log(tail=100_000)
        expected = [
            f"worker {worker_pid}: job {job_id} n=12 -> 144",
            f"scheduler {scheduler_pid}: heartbeat #{beat['count']}",
            f"worker {worker_pid}: SIGTERM received, exiting",
            f"scheduler {scheduler_pid}: SIGTERM received, exiting",
        ]
        missing = [line for line in expected if line not in log]
        assert not missing, server.explain(f"lines missing from the log: {missing}")
        # A companion that crashed and was restarted would still get the work done.
        assert "Traceback" not in log, server.explain("the log shows an exception")
    finally:
        _kill_tree(proc)
        shutil.rmtree(control_socket.parent, ignore_errors=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the server's process group and whatever else is left in its session.

    The master leads both (start_new_session), but a companion may run in a
    process group of its own, which ``killpg`` on the master's group misses.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)
    if os.path.isdir("/proc"):
        for pid, _ in _session_members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
