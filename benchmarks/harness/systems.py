"""The three ways to run the same background processes, behind one interface.

- ``GunicornServer``: ``gunicorn-companion serve`` with the programs as
  companions (forked from the preloaded app); with no programs it is the
  baseline web server.
- ``Supervisord``: each program a ``[program:x]`` of supervisord, cold-started
  with ``python -m workload.worker`` like users configure it.
- ``Circus``: each program a ``[watcher:x]`` of circusd, cold-started the same way.

Everything listens on UNIX sockets (or ZeroMQ ipc://) inside the run's
temporary directory: nothing touches the network.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

from . import proc
from .runtime import BENCH_DIR, BenchError, ReadyLog, Run, executable, wait_until

PYTHON = sys.executable
SLEEP_CODE = "import time; time.sleep(1e9)"


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    target: str  # as a companion: "module:callable"
    argv: tuple[str, ...]  # standalone, for supervisord and circus
    ready_line: bool = True  # writes a READY line when up


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """How the programs' output is captured to their files (the output benchmark)."""

    maxbytes: int = 0  # rotate at this size (0: never)
    backups: int = 0
    timestamps: bool = False  # prefix each line with the time (supervisord cannot)


TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def chatty_programs(count: int) -> list[Program]:
    """Programs printing 100-byte lines as fast as they can (workload.chatty)."""
    return [Program(f"chatty-{i}", "workload.chatty:main", (PYTHON, "-m", "workload.chatty"),
                    False) for i in range(count)]


def workload_programs(count: int) -> list[Program]:
    """Half queue workers, half schedulers: the realistic background processes."""
    programs = []
    for i in range(count):
        kind = "worker" if i % 2 == 0 else "scheduler"
        programs.append(Program(f"{kind}-{i}", f"workload.{kind}:main",
                                (PYTHON, "-m", f"workload.{kind}")))
    return programs


def idle_programs(count: int) -> list[Program]:
    """Tiny idle programs (the status, idle-CPU and scale runs)."""
    return [Program(f"idle-{i}", "workload.tiny:idle", (PYTHON, "-c", SLEEP_CODE), False)
            for i in range(count)]


def timed(argv: list[str], env: dict,
          timeout: float = 60.0) -> tuple[float, subprocess.CompletedProcess]:
    """Run a whole command; return its wall time and result."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv[:3])}... did not finish within {timeout:g}s") from None
    return time.perf_counter() - start, done


def _fail(what: str, done: subprocess.CompletedProcess) -> BenchError:
    out = (done.stdout + done.stderr).decode("utf-8", "replace").strip().splitlines()
    return BenchError(f"{what} failed (exit {done.returncode}): {' | '.join(out[-3:])}")


class System:
    label = "?"

    def __init__(self, run: Run, programs: list[Program], tag: str,
                 output: OutputOptions | None = None):
        self.run = run
        self.programs = programs
        self.output = output or OutputOptions()
        self.names = [p.name for p in programs]
        self.dir = run.workdir(f"{self.label}-{tag}")
        self.env = run.env(self.dir)
        self.ready = ReadyLog(os.path.join(self.dir, "ready.log"))
        self.popen: subprocess.Popen | None = None
        self.launched_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    def launch(self) -> None:
        argv = self.write_config()
        self.launched_at = time.monotonic()
        self.popen = self.run.spawn(argv, env=self.env, cwd=BENCH_DIR,
                                    log=os.path.join(self.dir, "daemon.log"))

    def write_config(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            raise BenchError(f"{self.label} exited (status {self.popen and self.popen.returncode});"
                             f" see {os.path.join(self.dir, 'daemon.log')}")

    def wait_all_ready(self, timeout: float) -> dict:
        """Every program wrote its ready line (programs that write one)."""
        names = [p.name for p in self.programs if p.ready_line]
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                return self.ready.wait_all(names, min(1.0, max(0.0, deadline - time.monotonic())))
            except BenchError:
                if time.monotonic() >= deadline:
                    raise

    def wait_all_running(self, timeout: float) -> None:
        def done():
            self.check_alive()
            return self.all_running()

        wait_until(done, timeout, f"{len(self.programs)} {self.label} programs to run",
                   interval=0.05)

    def all_running(self) -> bool:
        raise NotImplementedError

    def tree(self) -> list[int]:
        return proc.tree(self.pid)

    def log_paths(self, name: str) -> list[str]:
        """A program's log file and its backups, oldest first."""
        path = os.path.join(self.dir, "logs", f"{name}.log")
        return [f"{path}.{n}" for n in range(self.output.backups, 0, -1)] + [path]

    def tree_pss_kib(self) -> int:
        return proc.pss_sum_kib(self.tree())

    def daemon_pid(self) -> int:
        """The process that supervises the programs."""
        return self.pid

    def shutdown(self, timeout: float = 60.0) -> float:
        """SIGTERM the daemon; seconds until its whole tree has exited."""
        if self.popen is None or self.popen.poll() is not None:
            raise BenchError(f"{self.label} is not running")
        self.close_clients()
        pids = self.tree()
        os.kill(self.pid, signal.SIGTERM)
        elapsed = proc.wait_gone(pids, timeout, reap=self.popen.poll)
        if elapsed is None:
            raise BenchError(f"{self.label} did not shut down within {timeout:g}s")
        return elapsed

    def close_clients(self) -> None:
        """Close the API connections kept open (before a shutdown or a kill)."""

    def program_pid(self, name: str) -> int:
        line = self.ready.latest(name)
        if line is None:
            raise BenchError(f"no ready line from {name}")
        return line.pid

    # -- control -----------------------------------------------------------------------

    def cli_start(self, name: str) -> float:
        raise NotImplementedError

    def cli_stop(self, name: str) -> float:
        raise NotImplementedError

    def cli_status(self) -> float:
        raise NotImplementedError

    def api_status(self, reuse: bool) -> float:
        """One status call in-process: on a fresh connection/client, or on one kept open."""
        raise NotImplementedError


# -- gunicorn-companion ------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def raw_call(path: str, request: dict, timeout: float = 30.0) -> dict:
    """One newline-delimited JSON request on the control socket, one reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return json.loads(bytes(buf).split(b"\n", 1)[0])


class RawConnection:
    """One control connection kept open for many requests (the protocol allows it)."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()

    def call(self, request: dict) -> dict:
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise BenchError("control connection closed")
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


class GunicornServer(System):
    label = "companions"

    def __init__(self, run: Run, programs: list[Program], tag: str, *,
                 app: str = "workload.wsgi:application", settings: dict | None = None,
                 per_program: dict[str, dict] | None = None, output: OutputOptions | None = None,
                 plain: bool = False, workers: int = 1):
        if not programs:
            self.label = "gunicorn"  # the baseline: the same server without companions
        super().__init__(run, programs, tag, output)
        self.plain = plain  # run by Gunicorn's own `gunicorn` command (no companions)
        self.workers = workers
        # each HTTP worker appends "PID MONOTONIC" here once it is about to serve
        self.worker_ready = os.path.join(self.dir, "workers.log")
        self.changed: dict[str, dict] = {}  # per-program settings that differ (a reread)
        self.app = app
        self.settings = dict(settings or {})
        self.per_program = dict(per_program or {})
        self.control = os.path.join(self.dir, "ctl.sock")
        self.http = os.path.join(self.dir, "http.sock")
        self.exe = executable("gunicorn-companion")
        self._conn: RawConnection | None = None

    def write_config(self) -> list[str]:
        companions = [
            {"name": p.name, "target": p.target, "env": {"WORKLOAD_NAME": p.name},
             "stdout": os.path.join(self.dir, "logs", f"{p.name}.log"), "stderr": "stdout",
             "stdout_maxbytes": self.output.maxbytes, "stdout_backups": self.output.backups,
             **({"timestamps": True, "timestamp_format": TIME_FORMAT}
                if self.output.timestamps else {}),
             **self.per_program.get(p.name, {}), **self.changed.get(p.name, {})}
            for p in self.programs
        ]
        lines = [
            f"bind = {'unix:' + self.http!r}",
            f"workers = {self.workers}",
            "preload_app = True",
            "proc_name = 'gcbench'",
            f"errorlog = {os.path.join(self.dir, 'gunicorn.log')!r}",
            "loglevel = 'info'",
            "graceful_timeout = 10",
        ]
        if self.programs:
            lines.append(f"companion_control_socket = {self.control!r}")
            lines.append(f"companion_workers = {companions!r}")
        for key, value in self.settings.items():
            lines.append(f"{key} = {value!r}")
        lines += [
            "",
            "def post_worker_init(worker):",
            "    import os, time",
            f"    with open({self.worker_ready!r}, 'a') as f:",
            "        f.write(f'{os.getpid()} {time.monotonic():.6f}\\n')",
        ]
        conf = os.path.join(self.dir, "gunicorn.conf.py")
        with open(conf + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(conf + ".tmp", conf)  # a reread never sees half a file
        if self.plain:
            return [executable("gunicorn"), "-c", conf, self.app]
        return [self.exe, "serve", "-c", conf, self.app]

    def workers_ready(self) -> dict[int, float]:
        """HTTP worker pid -> when it was about to serve (the post_worker_init hook)."""
        try:
            with open(self.worker_ready) as f:
                return {int(pid): float(mono) for pid, mono in (row.split() for row in f)}
        except FileNotFoundError:
            return {}

    def http_ok(self) -> bool:
        conn = _UnixHTTPConnection(self.http, timeout=5)
        try:
            conn.request("GET", "/health/", headers={"Host": "localhost"})
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def wait_up(self, timeout: float) -> None:
        """The web server answers (its worker is up) and, with companions, the manager too."""

        def up():
            self.check_alive()
            if not self.http_ok():
                return False
            return not self.programs or raw_call(self.control, {"cmd": "status"}, 5)["ok"]

        wait_until(up, timeout, "gunicorn to answer", interval=0.05)

    def status(self, fields: tuple[str, ...] | None = None) -> list[dict]:
        request = {"cmd": "status"} if fields is None else {"cmd": "status", "fields": [*fields]}
        reply = raw_call(self.control, request)
        if not reply.get("ok"):
            raise BenchError(f"status refused: {reply.get('error')}")
        return reply["companions"]

    def all_running(self) -> bool:
        entries = self.status()
        return len(entries) == len(self.programs) and all(e["state"] == "RUNNING" for e in entries)

    def daemon_pid(self) -> int:
        """The companion manager: the parent of the companions."""
        for entry in self.status():
            if entry.get("pid"):
                fields = proc._stat(entry["pid"])
                if fields:
                    return int(fields[1])
        raise BenchError("no running companion to find the manager by")

    def _cli(self, *args: str) -> float:
        seconds, done = timed([self.exe, "-s", self.control, *args], self.env)
        if done.returncode != 0:
            raise _fail(f"gunicorn-companion {' '.join(args)}", done)
        return seconds

    def cli_start(self, name: str) -> float:
        return self._cli("start", name)

    def cli_stop(self, name: str) -> float:
        return self._cli("stop", name)

    def cli_status(self) -> float:
        seconds, done = timed([self.exe, "-s", self.control, "status"], self.env)
        rows = done.stdout.decode().strip().splitlines()
        if done.returncode != 0 or len(rows) < len(self.programs) + 1:
            raise _fail("gunicorn-companion status", done)
        return seconds

    def api_status(self, reuse: bool, brief: bool = False) -> float:
        """``brief``: only names and states ({"fields": ["name", "state"]})."""
        if reuse and self._conn is None:
            self._conn = RawConnection(self.control)
        request = {"cmd": "status", "fields": ["name", "state"]} if brief else {"cmd": "status"}
        start = time.perf_counter()
        if reuse:
            reply = self._conn.call(request)
        else:
            reply = raw_call(self.control, request)
        elapsed = time.perf_counter() - start
        if not reply.get("ok") or len(reply["companions"]) != len(self.programs):
            raise BenchError("raw status: unexpected reply")
        return elapsed

    def close_clients(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- supervisord -------------------------------------------------------------------------


class Supervisord(System):
    label = "supervisord"

    def __init__(self, run: Run, programs: list[Program], tag: str,
                 output: OutputOptions | None = None):
        if output is not None and output.timestamps:
            raise BenchError("supervisord cannot time-stamp a program's lines")
        super().__init__(run, programs, tag, output)
        self.socket = os.path.join(self.dir, "supervisor.sock")
        self.conf = os.path.join(self.dir, "supervisord.conf")
        self.ctl = executable("supervisorctl")
        self._proxy = None

    def write_config(self) -> list[str]:
        d = self.dir
        parts = [
            "[unix_http_server]", f"file={self.socket}", "chmod=0700", "",
            "[supervisord]", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid",
            f"childlogdir={d}/logs", "nodaemon=true", "minfds=4096", "loglevel=info", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{self.socket}", "",
        ]
        for p in self.programs:
            command = " ".join(_quote(a) for a in p.argv)
            parts += [
                f"[program:{p.name}]", f"command={command}", f"directory={BENCH_DIR}",
                "autostart=true", "autorestart=true", "startsecs=1", "stopsignal=TERM",
                "stopwaitsecs=10", f"stdout_logfile={d}/logs/{p.name}.log",
                f"stdout_logfile_maxbytes={self.output.maxbytes}",
                f"stdout_logfile_backups={self.output.backups}", "redirect_stderr=true",
                f'environment=WORKLOAD_NAME="{p.name}"', "",
            ]
        with open(self.conf, "w") as f:
            f.write("\n".join(parts))
        return [executable("supervisord"), "-c", self.conf]

    def new_proxy(self):
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def proxy(self):
        if self._proxy is None:
            self._proxy = self.new_proxy()
        return self._proxy

    def all_running(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        info = self.proxy().supervisor.getAllProcessInfo()
        return len(info) == len(self.programs) and all(i["statename"] == "RUNNING" for i in info)

    def _cli(self, *args: str, ok=(0,)) -> tuple[float, subprocess.CompletedProcess]:
        seconds, done = timed([self.ctl, "-c", self.conf, *args], self.env)
        if done.returncode not in ok:
            raise _fail(f"supervisorctl {' '.join(args)}", done)
        return seconds, done

    def cli_start(self, name: str) -> float:
        return self._cli("start", name)[0]

    def cli_stop(self, name: str) -> float:
        return self._cli("stop", name)[0]

    def cli_status(self) -> float:
        # supervisorctl status exits 3 when a program is not running: check the rows instead
        seconds, done = self._cli("status", ok=(0, 3))
        rows = [r for r in done.stdout.decode().splitlines() if "RUNNING" in r]
        if len(rows) < len(self.programs):
            raise _fail("supervisorctl status", done)
        return seconds

    def api_status(self, reuse: bool) -> float:
        start = time.perf_counter()
        proxy = self.proxy() if reuse else self.new_proxy()
        info = proxy.supervisor.getAllProcessInfo()
        elapsed = time.perf_counter() - start
        if len(info) != len(self.programs):
            raise BenchError("supervisord getAllProcessInfo: unexpected reply")
        return elapsed


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# -- circus ------------------------------------------------------------------------------


class Circus(System):
    label = "circus"

    def __init__(self, run: Run, programs: list[Program], tag: str,
                 output: OutputOptions | None = None):
        super().__init__(run, programs, tag, output)
        self.endpoint = f"ipc://{self.dir}/circus-ctl.sock"
        self.ini = os.path.join(self.dir, "circus.ini")
        self.ctl = executable("circusctl")
        self._client = None

    def write_config(self) -> list[str]:
        d = self.dir
        parts = [
            "[circus]", f"endpoint = {self.endpoint}", f"pubsub_endpoint = ipc://{d}/circus-pub.sock",
            # Empty: no cluster auto-discovery. By default circusd binds UDP
            # 0.0.0.0:12027 and joins a multicast group; this benchmark stays
            # off the network.
            "multicast_endpoint =",
            "statsd = False",
            # How often circusd reaps and respawns (its ini default is 5 s); 1 s
            # is in circus's favour for the restart figure.
            "check_delay = 1.0", "warmup_delay = 0", "",
        ]
        for p in self.programs:
            args = " ".join(_quote(a) for a in p.argv[1:])
            log = f"{d}/logs/{p.name}.log"
            parts += [
                f"[watcher:{p.name}]", f"cmd = {p.argv[0]}", f"args = {args}",
                f"working_dir = {BENCH_DIR}", "numprocesses = 1", "copy_env = True",
                "respawn = True", "stop_signal = TERM", "graceful_timeout = 10",
                "stdout_stream.class = FileStream", f"stdout_stream.filename = {log}",
                "stderr_stream.class = FileStream", f"stderr_stream.filename = {log}",
                *self._stream_options(), "",
                f"[env:{p.name}]", f"WORKLOAD_NAME = {p.name}", "",
            ]
        with open(self.ini, "w") as f:
            f.write("\n".join(parts))
        return [executable("circusd"), "--log-level", "info",
                "--log-output", os.path.join(d, "circusd.log"), self.ini]

    def _stream_options(self) -> list[str]:
        options = []
        for stream in ("stdout_stream", "stderr_stream"):
            if self.output.maxbytes:
                options += [f"{stream}.max_bytes = {self.output.maxbytes}",
                            f"{stream}.backup_count = {self.output.backups}"]
            if self.output.timestamps:
                # circus reads the ini with interpolation: a literal % is %%
                options.append(f"{stream}.time_format = {TIME_FORMAT.replace('%', '%%')}")
        return options

    def client(self):
        if self._client is None:
            from circus.client import CircusClient

            self._client = CircusClient(endpoint=self.endpoint, timeout=30)
        return self._client

    def call(self, command: str, **props) -> dict:
        from circus.client import make_message

        reply = self.client().call(make_message(command, **props))
        if reply.get("status") != "ok":
            raise BenchError(f"circus {command}: {reply}")
        return reply

    def watcher_status(self, name: str) -> str:
        from circus.client import make_message

        # for one watcher the reply's "status" is the watcher's state, not "ok"
        return self.client().call(make_message("status", name=name)).get("status")

    def all_running(self) -> bool:
        if not os.path.exists(self.endpoint[len("ipc://"):]):
            return False
        statuses = self.call("status")["statuses"]
        if len(statuses) != len(self.programs) or any(s != "active" for s in statuses.values()):
            return False
        return len(proc.children(self.pid)) >= len(self.programs)

    def _cli(self, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        seconds, done = timed([self.ctl, "--endpoint", self.endpoint, "--timeout", "30", *args],
                              self.env)
        if done.returncode != 0:
            raise _fail(f"circusctl {' '.join(args)}", done)
        return seconds, done

    def cli_start(self, name: str) -> float:
        return self._cli("start", name)[0]

    def cli_stop(self, name: str) -> float:
        seconds = self._cli("stop", name)[0]
        # circusctl answers before the watcher has stopped: wait for it, so the
        # next command is not refused ("already running watcher_stop command")
        wait_until(lambda: self.watcher_status(name) == "stopped", 30,
                   f"circus watcher {name} to stop")
        return seconds

    def cli_status(self) -> float:
        seconds, done = self._cli("status")
        rows = [r for r in done.stdout.decode().splitlines() if r.strip()]
        if len(rows) < len(self.programs):
            raise _fail("circusctl status", done)
        return seconds

    def api_status(self, reuse: bool) -> float:
        from circus.client import CircusClient, make_message

        if reuse:
            client = self.client()
        start = time.perf_counter()
        if not reuse:
            client = CircusClient(endpoint=self.endpoint, timeout=30)
        try:
            reply = client.call(make_message("status"))
        finally:
            if not reuse:
                client.stop()
        elapsed = time.perf_counter() - start
        if reply.get("status") != "ok" or len(reply["statuses"]) != len(self.programs):
            raise BenchError("circus status: unexpected reply")
        return elapsed

    def close_clients(self) -> None:
        if self._client is not None:
            self._client.stop()
            self._client = None
