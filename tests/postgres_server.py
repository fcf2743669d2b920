"""A throwaway PostgreSQL server for the fleet lease tests.

``postgres_server`` is a module-scoped pytest fixture: it runs Debian's
``initdb`` in a fresh temporary directory as the ``postgres`` user (we may be
root, and PostgreSQL refuses to run as root), starts ``postgres`` on a free
loopback port with trust authentication and its Unix socket in that
directory, waits until a connection succeeds, yields the PostgresServer, and
shuts it down and removes its directory afterwards. Without PostgreSQL (or
without the psycopg client) the tests that use it are skipped with a message
saying what to install.

``PostgresServer`` can also listen on another address and run inside a
network namespace (``prefix=["ip", "netns", "exec", NAME]``): the partition
tests (tests/netns.py) do. Its ``stop``, ``kill`` (the whole server, SIGKILL:
a crash, recovered from its WAL at the next start), ``restart``, ``pause``
and ``resume`` are the faults the tests inject.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support import alive, children

INSTALL_HINT = "apt-get install postgresql"
CLIENT_HINT = "pip install -e '.[postgresql]'"
SERVER_USER = "postgres"
START_DEADLINE_SECONDS = 60.0  # initdb's first checkpoint is slow on a loaded machine
STOP_DEADLINE_SECONDS = 30.0
START_ATTEMPTS = 3


def find_bindir() -> str | None:
    """The directory of Debian's (newest) ``initdb`` and ``postgres``, or PATH's."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda path: int(Path(path).parent.name)
                        if Path(path).parent.name.isdigit() else 0)
    for bindir in reversed(candidates):
        if os.access(os.path.join(bindir, "postgres"), os.X_OK):
            return bindir
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if find_bindir() is None:
        return f"PostgreSQL is not installed: install it ({INSTALL_HINT}) to run this test"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return f"the psycopg client is not installed: {CLIENT_HINT} to run this test"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return (f"running as root, and there is no {SERVER_USER!r} user to run "
                    f"PostgreSQL as ({INSTALL_HINT} creates it)")
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in its own directory, with its port and log."""

    def __init__(self, bindir: str, host: str = "127.0.0.1", port: int = 0,
                 prefix: tuple[str, ...] = (), enter=None):
        self.bindir = bindir
        self.host = host
        # 0: pick a free one at the first start (and keep it); a namespace's
        # address can be given a fixed one
        self.fixed_port = port
        self.port = port
        self.prefix = tuple(prefix)
        # runs the readiness probe where the server's address is reachable
        # (netns.Netns.call for a server inside a namespace)
        self.enter = enter or (lambda fn: fn())
        self.proc: subprocess.Popen | None = None
        # Not under pytest's tmp_path: its parents are 0700 root, and the
        # server runs as the postgres user.
        self.directory = Path(tempfile.mkdtemp(prefix="gc-postgres-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._as_server_user: tuple[str, ...] = ()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            # setpriv execs the server in place (runuser and su fork and wait),
            # so our pid is the postmaster's and signals reach it.
            self._as_server_user = ("setpriv", f"--reuid={entry.pw_uid}",
                                    f"--regid={entry.pw_gid}", "--init-groups", "--")
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(no log)"

    def _initdb(self) -> None:
        argv = [*self._as_server_user, os.path.join(self.bindir, "initdb"),
                "-D", str(self.data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=self.directory, timeout=START_DEADLINE_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        # initdb trusts loopback only; a server inside a test's own network
        # namespace is reached on the namespace's private subnet
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host all all all trust\n")

    def ready(self, timeout: float = 2.0) -> bool:
        """True when a connection to the server succeeds and answers a query."""
        import psycopg

        def probe() -> bool:
            try:
                with psycopg.connect(self.url, connect_timeout=max(2, int(timeout))) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error:
                return False
            return True

        return self.enter(probe)

    def start(self) -> PostgresServer:
        for attempt in range(START_ATTEMPTS):
            self.port = self.fixed_port or _free_port(self.host)
            argv = [*self.prefix, *self._as_server_user, os.path.join(self.bindir, "postgres"),
                    "-D", str(self.data), "-p", str(self.port),
                    "-c", f"listen_addresses={self.host}",
                    "-c", f"unix_socket_directories={self.directory}",
                    "-c", "max_connections=50", "-c", "shared_buffers=16MB"]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    argv, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True)  # a Ctrl-C of pytest is not its business
            deadline = time.monotonic() + START_DEADLINE_SECONDS
            while time.monotonic() < deadline:
                if self.ready():
                    # the port is ours from now on: a restart keeps the URL
                    self.fixed_port = self.port
                    return self
                if self.proc.poll() is not None:
                    break  # exited: the port was taken, or a real fault (see the log)
                time.sleep(0.05)
            else:
                self.kill()
                raise RuntimeError(f"postgres did not accept a connection on {self.host}:"
                                   f"{self.port} within {START_DEADLINE_SECONDS:g}s; its log:\n"
                                   f"{self.log()}")
            if attempt == START_ATTEMPTS - 1 or self.fixed_port:
                raise RuntimeError(f"postgres exited with code {self.proc.returncode}; its "
                                   f"log:\n{self.log()}")
        raise AssertionError("unreachable")

    def _tree(self) -> list[int]:
        """The postmaster and its live children. Each backend runs setsid(), so
        a signal to the postmaster's group would miss them."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def _signal_tree(self, signum: int) -> None:
        for pid in self._tree():  # the postmaster first: it forks no more
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _wait_tree_gone(self, tree: list[int]) -> None:
        """Wait until the postmaster and every backend of ``tree`` has exited, so
        that a new postmaster does not find the old shared memory in use."""
        assert self.proc is not None
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        self.proc.wait(STOP_DEADLINE_SECONDS)
        while any(alive(pid) for pid in tree):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres processes {tree} still alive after "
                                   f"{STOP_DEADLINE_SECONDS:g}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions are ended, the data is kept."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a paused server cannot shut down
        tree = self._tree()
        self.proc.send_signal(signal.SIGINT)
        try:
            self._wait_tree_gone(tree)
        except (subprocess.TimeoutExpired, RuntimeError):
            self.kill()

    def kill(self) -> None:
        """A crash: every process of the server SIGKILLed at once."""
        if self.proc is None:
            return
        tree = self._tree()
        self._signal_tree(signal.SIGKILL)
        self._wait_tree_gone(tree)

    def restart(self) -> None:
        """Stop (fast) and start again on the same port, with the same data."""
        self.stop()
        self.start()

    def wipe(self) -> None:
        """A crash, and a server that comes back on the same port with no data:
        a cluster created anew (a lost disk, a restore of the wrong backup)."""
        self.kill()
        shutil.rmtree(self.data)
        self._initdb()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the whole server: connections stay open and nothing answers."""
        self._signal_tree(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_tree(signal.SIGCONT)

    def remove(self) -> None:
        """Stop and delete the cluster's directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_server(**kwargs) -> PostgresServer:
    """A started PostgresServer; skips the test when PostgreSQL cannot run here."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer(find_bindir(), **kwargs)
    try:
        return server.start()
    except RuntimeError as exc:
        server.remove()
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def postgres_server():
    """A fresh PostgreSQL server for this test module (database ``postgres``)."""
    server = start_server()
    try:
        yield server
    finally:
        server.remove()


__all__ = ["INSTALL_HINT", "PostgresServer", "find_bindir", "missing_reason",
           "postgres_server", "start_server"]
