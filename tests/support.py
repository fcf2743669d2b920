"""Helpers for tests that run real Gunicorn masters: start, wait, inspect /proc."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

APPS = Path(__file__).parent / "apps"
SERVE = [sys.executable, "-m", "gunicorn_companion", "serve"]
DEFAULT_TIMEOUT = 30.0


def wait_until(predicate, timeout=DEFAULT_TIMEOUT, interval=0.01, message="condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    """Exists and is not a zombie (a zombie has exited; only its parent's reap is left)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


PF_EXITING = 0x4  # include/linux/sched.h: the process is in exit(), past its own code


def running_code(pid: int) -> bool:
    """Alive and not yet exiting: it may still run its own code. A process
    releases its files (and flocks) in exit() before it becomes a zombie."""
    fields = proc_stat(pid)
    return (fields is not None and fields[0] not in ("Z", "X")
            and not int(fields[6]) & PF_EXITING)


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children(pid: int) -> list[int]:
    found = []
    for p in all_pids():
        fields = proc_stat(p)
        if fields and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(p)
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def smaps_rollup(pid: int) -> dict[str, int]:
    """Memory figures of a process in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key.strip()] = int(rest.split()[0])
    return values


def live_tree(sessions: set[int]) -> list[int]:
    """Live members of ``sessions``, after adding to it (in place) every session
    led by a child of a member: a server's master session, plus the session of
    each companion manager (it runs setsid()), a hot upgrade's included.
    Sessions stay remembered, so leftovers are found after their parent died."""
    stats = {pid: proc_stat(pid) for pid in all_pids()}
    stats = {pid: f for pid, f in stats.items() if f and f[0] not in ("Z", "X")}
    while True:
        members = {pid for pid, f in stats.items() if int(f[3]) in sessions}
        new = {pid for pid, f in stats.items()
               if int(f[3]) == pid and int(f[1]) in members} - sessions
        if not new:
            return sorted(members)
        sessions |= new


def terminate_tree(proc: subprocess.Popen, tree, grace: float) -> None:
    """SIGTERM to the master, then SIGKILL for whatever is left of its tree."""
    if proc.poll() is None:
        tree()  # note the manager's session while the master still leads it
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    for pid in tree():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def control_command() -> list[str]:
    """The ``gunicorn-companion`` control CLI of this Python, as argv."""
    beside = Path(sys.executable).with_name("gunicorn-companion")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "gunicorn_companion"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``gunicorn-companion serve`` run in its own session and directory."""

    def __init__(self, root: Path, config: str, *, app: str = "compapp:app",
                 args: tuple[str, ...] = (), env: dict | None = None, stdout=None,
                 port: int | None = None):
        self.root = root
        self.stdout = stdout  # the master's stdout, when not the log file (stderr stays)
        self.state = root / "state"
        self.state.mkdir(exist_ok=True)
        shutil.copy(APPS / "compapp.py", root / "compapp.py")
        self.port = port or free_port()
        self.config_path = root / "gunicorn.conf.py"
        self.write_config(config)
        self.log_path = root / "server.log"
        self.env = dict(os.environ, COMPANION_STATE=str(self.state), PYTHONUNBUFFERED="1")
        self.env.pop("GUNICORN_CMD_ARGS", None)
        # Gunicorn 27's own control socket defaults to one path per user:
        # give each server its own so concurrent servers do not collide.
        self.env["XDG_RUNTIME_DIR"] = str(root)
        self.env.update(env or {})
        self.argv = [*SERVE, "-c", str(self.config_path), "--bind", f"127.0.0.1:{self.port}",
                     *args, app]
        self.proc: subprocess.Popen | None = None
        self.sessions: set[int] = set()  # the master's, and every manager's seen
        self.watch_exit = True  # fail waits at once if the master exits

    def write_config(self, text: str) -> None:
        header = "import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\n"
        # Whole or not at all: a master or manager may read it at any moment.
        partial = self.config_path.with_name(self.config_path.name + ".tmp")
        partial.write_text(header + textwrap.dedent(text))
        os.replace(partial, self.config_path)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "Server":
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.root, env=self.env,
                                     stdout=self.stdout or self._log_file,
                                     stderr=self._log_file,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def until(self, predicate, timeout=DEFAULT_TIMEOUT, message="condition"):
        """wait_until, failing at once (with the log) if the server has exited."""

        def check():
            value = predicate()
            if not value and self.watch_exit and self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) while waiting "
                                     f"for {message}:\n{self.log()}")
            return value

        try:
            return wait_until(check, timeout, message=message)
        except AssertionError as exc:
            if "timed out" in str(exc):
                raise AssertionError(f"{exc}\n--- server log ---\n{self.log()}") from None
            raise

    def wait_log(self, text: str, timeout=DEFAULT_TIMEOUT, count: int = 1) -> None:
        self.until(lambda: self.log().count(text) >= count, timeout,
                   message=f"{text!r} x{count} in the log")

    def wait_exit(self, timeout=DEFAULT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit within {timeout}s:\n{self.log()}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def tree(self) -> list[int]:
        """Every live process of this server, however deep (see live_tree)."""
        self.sessions.add(self.pid)
        return live_tree(self.sessions)

    def cleanup(self) -> None:
        if self.proc is not None:
            terminate_tree(self.proc, self.tree, grace=15)
            self._log_file.close()

    # -- companions --------------------------------------------------------------

    def manager_pid(self) -> int | None:
        if self.proc is not None:
            self.tree()  # remember its session: it outlives a SIGKILLed master
        for pid in children(self.pid):
            if "companion manager" in cmdline(pid):
                return pid
        return None

    def wait_manager(self, timeout=DEFAULT_TIMEOUT, other_than: int | None = None) -> int:
        return self.until(
            lambda: (lambda p: p if p and p != other_than else None)(self.manager_pid()),
            timeout, message="a companion manager")

    def starts(self, name: str) -> list[int]:
        """Every pid companion ``name`` started as, oldest first."""
        path = self.state / f"{name}.starts"
        if not path.exists():
            return []
        return [int(line) for line in path.read_text().split()]

    def wait_starts(self, name: str, count: int = 1, timeout=DEFAULT_TIMEOUT) -> list[int]:
        return self.until(lambda: (lambda s: s if len(s) >= count else None)(self.starts(name)),
                          timeout, message=f"{count} start(s) of {name!r}")

    def running_as(self, name: str) -> list[int]:
        """Live processes titled as companion ``name`` in this server's tree."""
        return [p for p in self.tree() if f"companion {name} [" in cmdline(p)]

    def http_get(self, path: str = "/") -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


class Control:
    """A raw connection to a manager's control socket."""

    def __init__(self, path, timeout=DEFAULT_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, obj: dict) -> dict:
        import json
        self.send(json.dumps(obj).encode() + b"\n")
        return self.reply()

    def reply(self) -> dict:
        import json
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the manager; pending {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def request_as(sock_path, request: dict, *, uid: int, gid: int, groups=()) -> dict:
    """One control request from a forked client running as uid:gid with only
    the supplementary ``groups``; a client that fails says why in the reply."""
    import json
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            reply = Control(sock_path).request(request)
        except BaseException as exc:  # report it to the test instead of dying silently
            reply = {"client failed": repr(exc)}
        try:
            os.write(write_end, json.dumps(reply).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def short_socket_path(name: str = "c.sock") -> Path:
    """AF_UNIX paths are limited to 107 bytes: pytest's tmp_path can be longer."""
    import tempfile
    return Path(tempfile.mkdtemp(prefix="gc-", dir="/tmp")) / name


def control_config(sock, companions, extra=""):
    """A config with a control socket at ``sock`` and these companions."""
    return "\n".join([
        "preload_app = True",
        "workers = 1",
        f"companion_control_socket = {str(sock)!r}",
        extra,
        f"companion_workers = {companions}",
    ]) + "\n"


def status(sock, timeout=DEFAULT_TIMEOUT) -> dict:
    """The companions a status request returns, by name."""
    reply = Control(sock, timeout=timeout).request({"cmd": "status"})
    assert reply["ok"], reply
    return {c["name"]: c for c in reply["companions"]}
