"""A throwaway ``redis-server`` for the tests of the examples that need Redis.

``redis_url`` is a module-scoped pytest fixture: it starts Debian's (or any)
``redis-server`` on a free loopback port, in a temporary directory, with
persistence off, waits until it answers PING, yields its URL
(``redis://127.0.0.1:PORT``, no database number: append ``/N`` to pick one),
and shuts it down afterwards. Without ``redis-server`` on PATH the tests that
use it are skipped with a message saying how to install it.

Standard library only (the PING is spoken in raw RESP), so the fixture works
whether or not the ``redis`` client package is installed. Import the fixture
into a test module with ``from redis_server import redis_url``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install redis-server"
START_DEADLINE_SECONDS = 15.0
STOP_DEADLINE_SECONDS = 10.0
# A port picked free can be taken by someone else before redis-server binds it.
START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout: float = 1.0, host: str = "127.0.0.1") -> bool:
    """True when a Redis server on ``host``:``port`` answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return reply == b"+PONG\r\n"


class RedisServer:
    """One ``redis-server`` process, with its port, directory and log."""

    def __init__(self, executable: str, directory: Path, *, persistent: bool = False,
                 host: str = "127.0.0.1", prefix: tuple[str, ...] = (), enter=None):
        self.executable = executable
        self.directory = directory
        # another address and a command prefix run it inside a network
        # namespace (tests/netns.py); enter runs the PING where it is reachable
        self.host = host
        self.prefix = tuple(prefix)
        self.enter = enter or (lambda fn: fn())
        # with an append-only file, a restart keeps the data; without, it
        # comes back empty (as a Redis without persistence does)
        self.persistent = persistent
        self.log_path = directory / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def start(self) -> RedisServer:
        """Start it; a restart keeps the port it had, so clients find it again."""
        for attempt in range(START_ATTEMPTS):
            self.port = self.port or _free_port()
            argv = [
                *self.prefix,
                self.executable,
                "--port", str(self.port),
                "--bind", self.host,
                # no password: Redis answers only loopback clients unless told
                # otherwise, and a namespace's clients are on its subnet
                "--protected-mode", "yes" if self.host == "127.0.0.1" else "no",
                "--save", "",
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always",
                "--dir", str(self.directory),
                "--daemonize", "no",
                "--logfile", str(self.log_path),
            ]
            self.proc = subprocess.Popen(
                argv,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest is not its business
            )
            deadline = time.monotonic() + START_DEADLINE_SECONDS
            while time.monotonic() < deadline:
                if self.enter(lambda: ping(self.port, timeout=0.5, host=self.host)):
                    return self
                if self.proc.poll() is not None:
                    self.port = 0  # taken by someone else: try another
                    break  # exited: the port was taken, or a real fault (see the log)
                time.sleep(0.02)
            else:
                self.stop()
                raise RuntimeError(
                    f"redis-server did not answer PING on port {self.port} within "
                    f"{START_DEADLINE_SECONDS:g}s; its log:\n{self.log()}"
                )
            if attempt == START_ATTEMPTS - 1:
                raise RuntimeError(
                    f"redis-server exited with code {self.proc.returncode}; its log:\n{self.log()}"
                )
        raise AssertionError("unreachable")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM (or SIGKILL: a crash) and wait; the port stays its own."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """The URL of a fresh ``redis-server`` for this test module (no database number)."""
    executable = find_redis_server()
    if executable is None:
        pytest.skip(
            f"redis-server is not on PATH: install it ({INSTALL_HINT}) to run the "
            "tests of the examples that use Redis"
        )
    directory = tmp_path_factory.mktemp("redis")
    server = RedisServer(executable, directory)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


__all__ = ["INSTALL_HINT", "RedisServer", "find_redis_server", "ping", "redis_url"]
