"""The benchmark's own bookkeeping: temporary directories, the processes it
started, their cleanup, and the ready lines the background processes write.

Every process the benchmark starts gets BENCH_MARKER=<run id> in its
environment and its own session, and each daemon is asked to get SIGTERM if
the benchmark itself dies (PR_SET_PDEATHSIG), which covers even a SIGKILL of
the benchmark. Cleanup ends, in this order of certainty,
the process trees under every daemon started, and every process on the
machine whose environment holds the marker (which catches a companion or a
program that escaped its tree). It runs in ``finally`` blocks, on Ctrl-C and
on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

from . import proc

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER_KEY = "BENCH_MARKER"


try:  # resolved here, not in the forked child
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a daemon's child before exec: SIGTERM it when the benchmark dies,
    even by SIGKILL (PR_SET_PDEATHSIG survives exec)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class BenchError(Exception):
    """A measurement could not be taken; the message says which and why."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind through every finally block, like Ctrl-C."""


def _interrupt(signum, frame):
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def install_interrupts() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def executable(name: str) -> str:
    """A console script of this interpreter's environment (the venv's bin/)."""
    import sys

    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if not found:
        raise BenchError(f"{name!r} is not installed next to {sys.executable} nor on PATH "
                         "(pip install -e '.[bench]')")
    return found


class Run:
    """One benchmark run: a temporary root and everything started under it."""

    def __init__(self, keep: bool = False):
        self.id = f"gcb-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.marker = f"{MARKER_KEY}={self.id}".encode()
        # Short path: UNIX socket paths are limited to 107 bytes.
        self.root = tempfile.mkdtemp(prefix="gcb-", dir="/tmp")
        self.keep = keep
        self.popens: list[subprocess.Popen] = []
        self.extra_env: dict[str, str] = {}  # for every process of the run
        self._counter = 0

    def workdir(self, label: str) -> str:
        self._counter += 1
        path = os.path.join(self.root, f"{self._counter:03d}-{label}")
        os.makedirs(os.path.join(path, "logs"))
        os.makedirs(os.path.join(path, "state"))
        return path

    def env(self, workdir: str, extra: dict | None = None) -> dict:
        import sys

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("WORKLOAD_", "GUNICORN_COMPANION_", "DJANGO_"))}
        env.pop("PYTHONPATH", None)
        env.update({
            MARKER_KEY: self.id,
            "PYTHONPATH": BENCH_DIR,
            "PYTHONDONTWRITEBYTECODE": "1",
            "DJANGO_SETTINGS_MODULE": "workload.settings",
            "WORKLOAD_STATE_DIR": os.path.join(workdir, "state"),
            "WORKLOAD_READY_FILE": os.path.join(workdir, "ready.log"),
            "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        })
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    def spawn(self, argv: list[str], *, env: dict, cwd: str, log: str) -> subprocess.Popen:
        """Start a daemon in its own session, output to ``log``."""
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                preexec_fn=_die_with_parent)
        self.popens.append(popen)
        return popen

    def reap(self) -> None:
        for popen in self.popens:
            popen.poll()

    def kill_everything(self) -> list[int]:
        """End every process of this run; return the pids that were still there."""
        killed = proc.kill_trees([p.pid for p in self.popens if p.poll() is None],
                                 self.marker)
        for popen in self.popens:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                popen.kill()
        self.popens = [p for p in self.popens if p.poll() is None]
        return killed

    def close(self) -> None:
        try:
            self.kill_everything()
        finally:
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Ready:
    name: str
    pid: int
    mono: float  # time.monotonic() when the line was written
    forked: float | None  # when the process was created (10 ms resolution)


_READY_RE = re.compile(
    r"READY name=(?P<name>\S+) pid=(?P<pid>\d+) mono=(?P<mono>[\d.]+) forked=(?P<forked>\S+)")


class ReadyLog:
    """Follows one ready file (appended to by every background process)."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.pending = b""
        self.lines: list[Ready] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.pending + data
        *complete, self.pending = data.split(b"\n")
        for raw in complete:
            match = _READY_RE.search(raw.decode("utf-8", "replace"))
            if match:
                forked = match["forked"]
                self.lines.append(Ready(match["name"], int(match["pid"]), float(match["mono"]),
                                        None if forked == "None" else float(forked)))

    def latest(self, name: str) -> Ready | None:
        self.poll()
        for line in reversed(self.lines):
            if line.name == name:
                return line
        return None

    def wait_for(self, name: str, timeout: float, not_pid: int | None = None,
                 after: float | None = None) -> Ready:
        """The first line for ``name`` from a pid other than ``not_pid`` written after ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            for line in self.lines:
                if (line.name == name and line.pid != not_pid
                        and (after is None or line.mono >= after)):
                    return line
            if time.monotonic() >= deadline:
                raise BenchError(f"no ready line from {name!r} within {timeout:g}s "
                                 f"(see {self.path})")
            time.sleep(0.002)

    def wait_all(self, names, timeout: float, after: float | None = None) -> dict[str, Ready]:
        deadline = time.monotonic() + timeout
        wanted = set(names)
        while True:
            self.poll()
            seen = {}
            for line in self.lines:
                if line.name in wanted and (after is None or line.mono >= after):
                    seen.setdefault(line.name, line)
            if len(seen) == len(wanted):
                return seen
            if time.monotonic() >= deadline:
                missing = sorted(wanted - set(seen))
                raise BenchError(f"{len(missing)} of {len(wanted)} processes wrote no ready line "
                                 f"within {timeout:g}s (first: {missing[:3]}; see {self.path})")
            time.sleep(0.01)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns a true value; BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)
