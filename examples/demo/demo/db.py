"""SQLite helpers shared by the web workers and the companions.

Every process opens its own connection with :func:`connect` (a connection must not
cross a fork). The database is in WAL mode, so readers (the web page) never wait
for the writer, and every connection has a busy timeout, so two writers (say, two
job workers claiming jobs) queue up for the write lock instead of failing with
"database is locked".

Connections are in autocommit mode (``isolation_level=None``); the functions that
need several statements to happen as one open an explicit ``BEGIN IMMEDIATE``
transaction, which takes the write lock up front.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

# examples/demo/, the directory that holds this package and gunicorn.conf.py.
DEMO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DB_PATH = os.path.join(DEMO_DIR, "var", "demo.sqlite3")

# How long a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_SECONDS = 10.0

# Bumped (with a migration in _ensure_schema) whenever the tables change.
SCHEMA_VERSION = 1

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        n           INTEGER NOT NULL,
        status      TEXT    NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'running', 'done')),
        result      INTEGER,
        worker_pid  INTEGER,
        created_at  REAL    NOT NULL,
        started_at  REAL,
        finished_at REAL
    )
    """,
    "CREATE INDEX IF NOT EXISTS jobs_status_id ON jobs (status, id)",
    """
    CREATE TABLE IF NOT EXISTS heartbeat (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        at    REAL    NOT NULL,
        pid   INTEGER NOT NULL,
        count INTEGER NOT NULL
    )
    """,
)


@dataclass(frozen=True)
class Job:
    id: int
    n: int
    status: str  # 'queued', then 'running' once a worker claimed it, then 'done'
    result: int | None
    worker_pid: int | None  # the companion process that claimed (and ran) the job
    created_at: float
    started_at: float | None
    finished_at: float | None

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Heartbeat:
    at: float  # unix time of the last beat
    pid: int  # the scheduler process that wrote it
    count: int  # beats so far, over every scheduler process that ran

    def as_json(self) -> dict:
        return asdict(self)


def db_path() -> str:
    """The database file: ``$DEMO_DB``, or ``var/demo.sqlite3`` beside gunicorn.conf.py.

    Read on every call (not at import time) so that each process, and each test,
    sees the environment it runs with. A relative ``$DEMO_DB`` is taken from the
    current directory.
    """
    return os.path.abspath(os.environ.get("DEMO_DB") or DEFAULT_DB_PATH)


def connect(path: str | None = None) -> sqlite3.Connection:
    """Open the database (creating its directory and tables if needed)."""
    path = path or db_path()
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        _use_wal(conn)
        # Safe with WAL (a power cut may lose the last commits, never corrupt the file).
        conn.execute("PRAGMA synchronous = NORMAL")
        _ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock first, roll back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL mode, unless it is in WAL mode already.

    The mode is stored in the file, so only the first connections to a new database
    switch it. The switch needs the database to itself, and SQLite does not always
    wait (busy timeout) for that: when several processes open a new database at once
    (the companions and the web workers at boot), it can fail at once with
    "database is locked". So retry it, for as long as the busy timeout.
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def _ensure_schema(conn: sqlite3.Connection) -> None:
    # Whichever process comes first creates the tables; the cheap read below keeps
    # every later connection from taking the write lock just to find them there.
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with transaction(conn):
        # Another process may have won the race between the check and the lock.
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _job(row: sqlite3.Row) -> Job:
    return Job(**dict(row))


# -- jobs ----------------------------------------------------------------------


def enqueue_job(conn: sqlite3.Connection, n: int, now: float | None = None) -> int:
    """Add a queued job; return its id."""
    cursor = conn.execute(
        "INSERT INTO jobs (n, status, created_at) VALUES (?, 'queued', ?)",
        (n, time.time() if now is None else now),
    )
    return int(cursor.lastrowid)


def claim_next_job(conn: sqlite3.Connection, pid: int, now: float | None = None) -> Job | None:
    """Mark the oldest queued job as running for ``pid`` and return it (None if none).

    The select and the update run in one ``BEGIN IMMEDIATE`` transaction, which
    holds the database's single write lock from the start: while one process is
    between the two statements, every other claimer waits at its ``BEGIN``, so two
    processes can never claim the same job.
    """
    with transaction(conn):
        row = conn.execute(
            "SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        conn.execute(
            "UPDATE jobs SET status = 'running', worker_pid = ?, started_at = ? WHERE id = ?",
            (pid, time.time() if now is None else now, row["id"]),
        )
        return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())


def finish_job(
    conn: sqlite3.Connection, job_id: int, result: int, now: float | None = None
) -> None:
    """Store a claimed job's result and mark it done."""
    conn.execute(
        "UPDATE jobs SET status = 'done', result = ?, finished_at = ? WHERE id = ?",
        (result, time.time() if now is None else now, job_id),
    )


def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def recent_jobs(conn: sqlite3.Connection, limit: int = 20) -> list[Job]:
    """The newest ``limit`` jobs, newest first."""
    rows = conn.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [_job(row) for row in rows]


# -- heartbeat -----------------------------------------------------------------


def record_heartbeat(conn: sqlite3.Connection, pid: int, now: float | None = None) -> Heartbeat:
    """Upsert the single heartbeat row (count + 1) and return it."""
    with transaction(conn):
        conn.execute(
            """
            INSERT INTO heartbeat (id, at, pid, count) VALUES (1, ?, ?, 1)
            ON CONFLICT (id) DO UPDATE
                SET at = excluded.at, pid = excluded.pid, count = heartbeat.count + 1
            """,
            (time.time() if now is None else now, pid),
        )
        heartbeat = read_heartbeat(conn)
    assert heartbeat is not None
    return heartbeat


def read_heartbeat(conn: sqlite3.Connection) -> Heartbeat | None:
    row = conn.execute("SELECT at, pid, count FROM heartbeat WHERE id = 1").fetchone()
    return None if row is None else Heartbeat(at=row["at"], pid=row["pid"], count=row["count"])
