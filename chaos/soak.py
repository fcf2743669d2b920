"""A chaos soak: a real master with a dozen companions, random faults for N
minutes, then the checks that must hold whatever happened.

    python chaos/soak.py --minutes 2 [--seed S]      (make chaos MINUTES=2 SEED=S)

Every random choice comes from one generator seeded with the printed seed, so a
failing run can be repeated with the same schedule of faults (the processes'
own timing still varies: a repeat is likely, not certain, to fail the same way).
See docs/development.md, "Chaos soak".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from gunicorn_companion.handle import HEALTHY_UPTIME

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import (  # noqa: E402  (tests/ is not a package)
    Control,
    Server,
    alive,
    all_pids,
    children,
    cmdline,
    live_tree,
    proc_stat,
    running_code,
    short_socket_path,
    smaps_rollup,
    wait_until,
)

SINGLETON = "beat"
# What a master prints when it refuses its config at boot (app.py)
BOOT_REFUSED = "\nError: invalid companion configuration"
STARTED = re.compile(r"\[(\d+)\] \[INFO\] Starting gunicorn ")  # Gunicorn's first line
# The faults that replace the manager stop for the last part of the run, so one
# manager lives through every other fault and its RSS and fds can be compared.
KEEP_MANAGER_SHARE = 0.4
# Allowed growth of the manager's RSS between the two quiet checkpoints of the
# last phase. Lines held for a stalled or failing destination are bounded
# (output.BUFFER_HARD_LIMIT, 4 MiB, per destination, and only while it fails;
# the checkpoints are taken with every destination working), `tail` keeps at
# most 1,000 lines per companion, and pymalloc keeps freed arenas: 8 MiB is
# room for that noise, while a leak per fault (hundreds of faults) exceeds it.
RSS_TOLERANCE_KB = 8 * 1024
# The fd count must come back to the baseline exactly: at both checkpoints the
# config, the companions' states and the open destinations are the same, and
# the only transient fds (control connections) are waited out.
FD_SETTLE_SECONDS = 10.0
MAX_STOP_SECONDS = 1.5  # the longest SIGSTOP before the SIGCONT


def companion_base(logs: Path, disk: Path) -> list[dict]:
    """The companions every run starts with: one of every kind."""
    return [
        {"name": "sleeper", "target": "compapp:sleeper"},
        {"name": "stubborn", "target": "compapp:stubborn", "stop_timeout": 1},  # a slow stop
        {"name": "pool", "target": "compapp:pool", "env": {"POOL_SIZE": "2"}},
        {"name": "prog", "command": ["sleep", "1000000"]},  # an exec'd program
        {"name": "inst", "target": "compapp:instance", "processes": 3},
        {"name": SINGLETON, "target": "compapp:sleeper", "singleton": True, "startsecs": 0},
        # over its max_memory only when a config change lowers it (then recycled)
        {"name": "grow", "target": "compapp:grower", "env": {"GROW_MB": "24"},
         "max_memory": "64MB"},
        # wait_ready, heartbeats and a watchdog, from a program (docs/configuration.md)
        {"name": "ready", "wait_ready": True, "watchdog_timeout": 2,
         "command": ["sh", "-c", "sleep 0.3; printf 'ready %d' $$ >&$GUNICORN_COMPANION_NOTIFY_FD; "
                     "while true; do printf 'heartbeat %d' $$ >&$GUNICORN_COMPANION_NOTIFY_FD; "
                     "sleep 0.3; done"]},
        {"name": "talk", "target": "compapp:talker", "stdout": str(logs / "talk.log"),
         "stderr": "stdout", "stdout_maxbytes": 4096, "stdout_backups": 3},
        {"name": "count", "target": "compapp:counter", "env": {"COUNT_INTERVAL": "0.01"},
         "stdout": str(disk / "count.log"), "stdout_maxbytes": 65536, "stdout_backups": 2},
        {"name": "inherit", "target": "compapp:counter", "env": {"COUNT_INTERVAL": "0.5"},
         "stdout": "inherit", "timestamps": True},  # into the server log, slowly
    ]


def companion_extras(logs: Path) -> list[dict]:
    """Companions a config change may add, then remove or change again."""
    return [
        {"name": "crash", "target": "compapp:crasher", "env": {"CRASH_AFTER": "1.5"}},
        {"name": "burst", "target": "compapp:burster", "env": {"BURST_LINES": "3000"},
         "stdout": str(logs / "burst.log"), "stdout_maxbytes": 65536, "stdout_backups": 1},
        {"name": "words", "target": "compapp:last_words", "startsecs": 0},
        {"name": "forker", "target": "compapp:forker"},
        {"name": "abandon", "target": "compapp:abandoner", "startsecs": 0},
        {"name": "returns", "target": "compapp:returns_after_cleanup"},
        {"name": "lazy", "target": "compapp:sleeper", "autostart": False},
    ]


class Soak:
    def __init__(self, seed: int, minutes: float, root: Path):
        self.rng = random.Random(seed)
        self.seed = seed
        self.seconds = minutes * 60
        self.root = root
        self.sock = short_socket_path()
        self.logs = root / "logs"
        self.logs.mkdir()
        self.disk = root / "disk"
        self.disk.mkdir()
        self.tmpfs = self._mount_tmpfs()
        self.violations: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.stopped: set[int] = set()  # SIGSTOPped, SIGCONT still owed
        # (when, what) undoes a fault: run by the sampler thread, so that a
        # SIGCONT is not late while the main thread waits on a stopped manager
        self.undo: list[tuple[float, object]] = []
        self.nofile: dict[int, tuple[int, int]] = {}  # manager -> its limits before the fault
        self.generation = 0
        self.config_valid = True
        self.workers = 2
        self.companions = companion_base(self.logs, self.disk)
        self.srv = Server(root, self.config_text(self.companions))
        self.srv.watch_exit = False  # the first master exits on purpose (USR2)
        self.master = 0
        self.promotions = 0
        self.manager_seen: dict[int, float] = {}
        self.lock = threading.Lock()
        self.sampling = threading.Event()
        self.samples = 0
        self.most_singletons = 0

    # -- setup -----------------------------------------------------------------------

    def _mount_tmpfs(self) -> bool:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(self.disk)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"chaos: note: no tmpfs ({done.stderr.strip() or 'mount failed'}); "
                  "the full-disk fault is skipped", flush=True)
            return False
        return True

    def config_text(self, companions: list[dict], broken: str = "") -> str:
        return "\n".join([
            "preload_app = True",
            f"workers = {self.workers}",
            "graceful_timeout = 5",
            f"companion_control_socket = {str(self.sock)!r}",
            f"companion_lock_dir = {str(self.root / 'locks')!r}",
            "companion_memory_check_interval = 0.5",
            "companion_stop_timeout = 2",
            "companion_restart_delay = 0.2",
            "companion_max_restart_delay = 2",
            f"companion_workers = {companions!r}",
            broken,
        ]) + "\n"

    # -- the server's processes (never anything outside its tree) ----------------------

    def manager(self) -> int | None:
        for pid in children(self.master):
            if "companion manager" in cmdline(pid):
                if pid not in self.manager_seen:
                    self.manager_seen[pid] = time.monotonic()
                    self.srv.tree()  # remember its session: signals go to ours only
                return pid
        return None

    def ours(self, pid: int) -> bool:
        """In one of this server's sessions (a pid may have been reused)."""
        fields = proc_stat(pid)
        return fields is not None and int(fields[3]) in self.srv.sessions

    def http_workers(self) -> list[int]:
        return [p for p in children(self.master) if "worker" in cmdline(p)]

    def companion_processes(self) -> list[int]:
        manager = self.manager()
        if manager is None:
            return []
        mains = children(manager)
        return mains + [p for main in mains for p in children(main)]

    def status(self) -> dict:
        control = Control(self.sock, timeout=20)
        try:
            reply = control.request({"cmd": "status"})
        finally:
            control.close()
        assert reply["ok"], reply
        return {c["name"]: c for c in reply["companions"]}

    # -- checks ------------------------------------------------------------------------

    def violated(self, check: str, evidence: str) -> None:
        with self.lock:
            if check not in self.violations:  # the first evidence of each check
                print(f"chaos: VIOLATED {check}: {evidence}", flush=True)
                self.violations[check] = evidence

    def sample(self) -> None:
        """What must hold at every moment: run often, from the sampler thread."""
        master = self.master
        if master and not alive(master) and master == self.master:
            self.violated("master alive", f"master {master} died without being told to")
        # Newest first: an older instance still running when looked at after a
        # newer one was seen running overlapped it for real (tests/test_supervision.py).
        running = [p for p in reversed(self.srv.starts(SINGLETON))
                   if running_code(p) and f"companion {SINGLETON} [" in cmdline(p)]
        self.most_singletons = max(self.most_singletons, len(running))
        if len(running) > 1:
            self.violated("singleton ran twice", f"{SINGLETON!r} running as {running} at once")
        self.samples += 1

    def sampler(self) -> None:
        # A thread in the driver only: the driver forks nothing but subprocess's
        # fork-exec (safe with threads), and sampling must go on while the main
        # thread waits for a hot upgrade or a stop.
        while self.sampling.is_set():
            try:
                self.undo_faults()
                self.sample()
            except Exception:
                self.violated("sampler", traceback.format_exc())
            time.sleep(0.005)

    # -- faults ------------------------------------------------------------------------

    def send(self, pid: int, sig: int) -> bool:
        if not self.ours(pid):
            return False
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def signal_victim(self, sig: int, manager_ok: bool) -> str:
        """``sig`` to a random HTTP worker, companion or (if ``manager_ok``) the
        manager; a SIGSTOP is followed by its SIGCONT a little later."""
        name = signal.Signals(sig).name if sig in set(signal.Signals) else f"signal {sig}"
        kind = self.rng.choice(["worker", "companion"] + (["manager"] if manager_ok else []))
        pids = {"worker": self.http_workers, "companion": self.companion_processes,
                "manager": lambda: [p for p in [self.manager()] if p]}[kind]()
        with self.lock:
            pids = [p for p in pids if p not in self.stopped]
        if not pids:
            return f"{name}: no {kind} to signal"
        pid = self.rng.choice(pids)
        if self.send(pid, sig) and sig == signal.SIGSTOP:
            with self.lock:
                self.stopped.add(pid)

            def cont(pid=pid):
                with self.lock:
                    self.stopped.discard(pid)
                self.send(pid, signal.SIGCONT)

            self.later(self.rng.uniform(0.05, MAX_STOP_SECONDS), cont)
        return f"{name} to {kind} {pid}"

    def fault_sigkill(self, phase_a: bool) -> str:
        manager = self.manager()
        # A manager killed within HEALTHY_UPTIME of its start is replaced ever
        # more slowly: kill only one that has been up that long.
        manager_ok = (phase_a and manager is not None
                      and time.monotonic() - self.manager_seen[manager] > HEALTHY_UPTIME)
        return self.signal_victim(signal.SIGKILL, manager_ok)

    def fault_sigstop(self, phase_a: bool) -> str:
        return self.signal_victim(signal.SIGSTOP, manager_ok=True)

    def fault_realtime(self, phase_a: bool) -> str:
        # unnamed signals: the manager ignores them, the rest die of them
        return self.signal_victim(self.rng.randint(signal.SIGRTMIN, signal.SIGRTMAX),
                                  manager_ok=True)

    def random_companions(self) -> list[dict]:
        """The base companions with random changes: extras added, some base
        ones changed (restarted) or left out; the singleton always stays."""
        companions = []
        for spec in companion_base(self.logs, self.disk):
            roll = self.rng.random()
            if spec["name"] != SINGLETON and roll < 0.1:
                continue  # removed
            if roll > 0.75:
                spec = dict(spec, env={**spec.get("env", {}), "GEN": str(self.generation)})
            if spec["name"] == "inst" and self.rng.random() < 0.5:
                spec = dict(spec, processes=self.rng.randint(1, 4))
            if spec["name"] == "grow" and self.rng.random() < 0.5:
                spec = dict(spec, max_memory="8MB")
            companions.append(spec)
        extras = companion_extras(self.logs)
        companions += self.rng.sample(extras, self.rng.randint(0, len(extras)))
        return companions

    def change_config(self) -> str:
        self.generation += 1
        if self.rng.random() < 0.1:
            # an operator's mistake: refused, the running config stays
            self.config_valid = False
            self.srv.write_config(self.config_text(self.companions, "companion_stop_timout = 3"))
            return "broken config"
        self.config_valid = True
        self.workers = self.rng.randint(1, 3)
        self.companions = self.random_companions()
        self.srv.write_config(self.config_text(self.companions))
        return f"config {self.generation}: {sorted(c['name'] for c in self.companions)}"

    def fault_hup(self, phase_a: bool) -> str:
        what = self.change_config()
        self.send(self.master, signal.SIGHUP)
        return f"HUP with {what}"

    def fault_reread(self, phase_a: bool) -> str:
        what = self.change_config()
        try:
            control = Control(self.sock, timeout=30)
            try:
                reply = control.request({"cmd": "reread"})
            finally:
                control.close()
        except OSError as exc:  # a manager being replaced, or one that is stopped
            return f"reread with {what}: {exc!r}"
        if self.config_valid and not reply.get("ok") and "busy" not in reply.get("error", ""):
            return f"reread with {what}: refused {reply}"
        return f"reread with {what}"

    def fault_hangup(self, phase_a: bool) -> str:
        names = [c["name"] for c in self.companions]
        request = self.rng.choice([
            {"cmd": "restart", "name": self.rng.choice(names)},
            {"cmd": "stop", "name": self.rng.choice(names)},
            {"cmd": "start", "name": self.rng.choice(names)},
            {"cmd": "tail", "name": self.rng.choice(names), "follow": True},
            {"cmd": "status"},
            {"cmd": "reread"},
        ])
        data = json.dumps(request).encode() + b"\n"
        cut = self.rng.choice([len(data), len(data) // 2])  # whole, or cut mid-line
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            with sock:
                sock.connect(str(self.sock))
                sock.sendall(data[:cut])
                if self.rng.random() < 0.5:
                    sock.settimeout(0.2)  # a stop or restart answers only once done
                    try:
                        sock.recv(self.rng.choice([1, 100]))  # read a little of the reply
                    except TimeoutError:
                        pass
        except OSError as exc:
            return f"hangup {request['cmd']}: {exc!r}"
        return f"hung up on {request} after {cut} bytes"

    def fault_logdir(self, phase_a: bool) -> str:
        shutil.rmtree(self.logs, ignore_errors=True)
        self.send(self.master, signal.SIGUSR1)
        self.later(self.rng.uniform(0.2, 3), self.restore_logs)
        return "log directory removed, USR1"

    def restore_logs(self) -> None:
        self.logs.mkdir(exist_ok=True)
        self.send(self.master, signal.SIGUSR1)

    def fault_disk_full(self, phase_a: bool) -> str:
        if not self.tmpfs:
            return "disk full: skipped (no tmpfs)"
        filler = self.disk / "filler"
        with open(filler, "ab", buffering=0) as f:
            block = b"\0" * 65536
            try:
                while True:
                    f.write(block)
            except OSError:
                pass  # ENOSPC: full
        self.later(self.rng.uniform(0.5, 4), self.free_disk)
        return "tmpfs filled"

    def free_disk(self) -> None:
        (self.disk / "filler").unlink(missing_ok=True)

    def fault_nofile(self, phase_a: bool) -> str:
        manager = self.manager()
        if manager is None or manager in self.nofile:
            return "nofile: no manager, or its limit is low already"
        try:
            fds = len(os.listdir(f"/proc/{manager}/fd"))
            limits = resource.prlimit(manager, resource.RLIMIT_NOFILE)
            low = fds + self.rng.randint(0, 6)
            resource.prlimit(manager, resource.RLIMIT_NOFILE, (low, limits[1]))
        except (ProcessLookupError, FileNotFoundError):
            return "nofile: manager gone"
        self.nofile[manager] = limits
        self.later(self.rng.uniform(0.5, 4), lambda: self.restore_nofile(manager))
        return f"RLIMIT_NOFILE of manager {manager} lowered to {low} ({fds} open)"

    def restore_nofile(self, pid: int) -> None:
        limits = self.nofile.pop(pid)
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        except ProcessLookupError:
            pass

    def fault_usr2(self, phase_a: bool) -> str:
        """A hot upgrade as an operator does it: USR2, wait until the new master
        serves, TERM the old one.

        The new master reads the config files anew, and refuses to boot when
        they are invalid just then: an operator's typo (``change_config``), or a
        companion's log directory removed by the log-directory fault (a missing
        directory is a config error at boot, as in supervisord; only a running
        manager rides it out). The old master must then go on as it was."""
        old = self.master
        log_offset = self.srv.log_path.stat().st_size
        self.send(old, signal.SIGUSR2)

        def new_master_or_refusal():
            new = self.new_master(old, log_offset)
            if new:
                return new
            return BOOT_REFUSED in self.log_since(log_offset) and "refused"

        try:
            outcome = wait_until(new_master_or_refusal, timeout=60, interval=0.02,
                                 message="the new master, or its refusal in the log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe_process(old)}") from None
        if outcome == "refused":
            # Gunicorn ignores a USR2 while its last re-executed child is unreaped
            wait_until(lambda: not self.upgrade_children(old), timeout=30,
                       message=f"master {old} to reap the refused new master")
            message = self.log_since(log_offset).split(BOOT_REFUSED, 1)[1].split("\n\n")[0]
            reason = " ".join(message.split())[:300]
            return f"hot upgrade refused by the new master ({reason}); {old} stays"
        new, previous_master = outcome, old
        self.master = new
        wait_until(lambda: self.manager() and self.http_workers(), timeout=60,
                   message="the new master's manager and workers")
        self.send(previous_master, signal.SIGTERM)
        wait_until(lambda: not alive(previous_master), timeout=60, message="the old master to exit")
        self.promotions += 1
        # Gunicorn ignores USR2 until the new master has noticed its promotion
        self.srv.wait_log("Master has been promoted.", timeout=30, count=self.promotions)
        return f"hot upgrade: master {previous_master} -> {new}"

    @staticmethod
    def upgrade_children(master: int) -> list[int]:
        """``master``'s children that a USR2 made and it has not reaped yet:
        those no longer titled by Gunicorn (a re-executed program), or exited.
        (A freshly forked HTTP worker or manager shows its parent's title for
        a moment.) Gunicorn ignores the next USR2 while one is left."""
        found = []
        for pid in all_pids():
            fields = proc_stat(pid)
            if fields and int(fields[1]) == master and (
                    fields[0] in ("Z", "X") or not cmdline(pid).startswith("gunicorn:")):
                found.append(pid)
        return found

    def new_master(self, old: int, log_offset: int) -> int | None:
        """The master a USR2 to ``old`` started (it logs its start with its
        pid), once it has titled itself: it is serving then."""
        for pid in map(int, STARTED.findall(self.log_since(log_offset))):
            if "master" in cmdline(pid) and (proc_stat(pid) or [0, 0])[1] == str(old):
                return pid
        return None

    def log_since(self, offset: int) -> str:
        with open(self.srv.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    # -- the run -----------------------------------------------------------------------

    FAULTS = {
        "sigkill": 6, "sigstop": 5, "realtime": 4, "usr2": 1, "hup": 2, "reread": 2,
        "hangup": 5, "logdir": 1, "disk_full": 1, "nofile": 1,
    }

    def settle(self, timeout: float = 90) -> None:
        """Back to the base config with every fault undone, and every companion
        RUNNING: a quiet moment to compare the manager's figures."""
        self.undo_faults(everything=True)
        self.workers = 2
        self.companions = companion_base(self.logs, self.disk)
        self.config_valid = True
        self.srv.write_config(self.config_text(self.companions))
        wait_until(self.manager, timeout=timeout, message="a companion manager")
        wanted = {c["name"] for c in self.companions}

        def reread_and_start():
            try:
                control = Control(self.sock, timeout=30)
                try:
                    control.request({"cmd": "reread"})
                    for name, c in self.status().items():
                        if c["state"] in ("STOPPED", "FATAL"):
                            control.request({"cmd": "start", "name": name})
                finally:
                    control.close()
                states = self.status()
            except (OSError, AssertionError):
                return False
            groups = {name.split(":")[0] for name in states}
            return groups == wanted and all(c["state"] == "RUNNING" for c in states.values())

        try:
            wait_until(reread_and_start, timeout=timeout, interval=0.5,
                       message="every companion RUNNING on the base config")
        except AssertionError as exc:
            self.violated("settles", f"{exc}: {self.describe_status()}")

    def describe_process(self, pid: int) -> str:
        """What a process is doing and what it has forked: for a wait that timed out."""
        def read(name: str) -> str:
            try:
                return Path(f"/proc/{pid}/{name}").read_text(errors="replace").strip()
            except OSError as exc:
                return f"({exc.strerror})"
        status = {k: v.strip() for k, _, v in (line.partition(":") for line in
                                                 read("status").splitlines())}
        lines = [f"process {pid}: {cmdline(pid)!r}, state {status.get('State')}, "
                 f"threads {status.get('Threads')}, SigPnd {status.get('SigPnd')}, "
                 f"ShdPnd {status.get('ShdPnd')}, SigBlk {status.get('SigBlk')}, "
                 f"wchan {read('wchan')!r}"]
        tasks = os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []
        for task in sorted(tasks):
            lines.append(f"  thread {task}: wchan {read(f'task/{task}/wchan')!r} "
                         f"stack {read(f'task/{task}/stack').splitlines()[:3]}")
        for child in children(pid):
            lines.append(f"  child {child}: {cmdline(child)!r} ({(proc_stat(child) or ['?'])[0]})")
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
        if spy:  # its Python stack, where the tool is installed
            dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True,
                                  text=True, timeout=30)
            lines.append(dump.stdout + dump.stderr)
        return "\n".join(lines)

    def describe_status(self) -> str:
        try:
            return json.dumps({n: (c["state"], c.get("pid")) for n, c in self.status().items()})
        except Exception as exc:
            return f"(no status: {exc!r})"

    def manager_figures(self) -> tuple[int, int, int]:
        manager = self.manager()
        return manager, smaps_rollup(manager)["Rss"], len(os.listdir(f"/proc/{manager}/fd"))

    def later(self, delay: float, undo) -> None:
        with self.lock:
            self.undo.append((time.monotonic() + delay, undo))

    def undo_faults(self, everything: bool = False) -> None:
        """Undo the faults that are due (or all): SIGCONT, the log directory,
        the disk, the fd limit. From either thread; each undo runs once."""
        now = time.monotonic()
        with self.lock:
            due = [u for u in self.undo if everything or u[0] <= now]
            self.undo = [u for u in self.undo if u not in due]
        for _, undo in due:
            undo()

    def run_faults(self, until: float, phase_a: bool) -> None:
        # the last phase keeps its manager: no hot upgrade (fault_sigkill
        # spares the manager itself)
        names = [n for n in self.FAULTS if phase_a or n != "usr2"]
        weights = [self.FAULTS[n] for n in names]
        while time.monotonic() < until and not self.violations:
            name = self.rng.choices(names, weights)[0]
            what = getattr(self, f"fault_{name}")(phase_a)
            self.counts[name] = self.counts.get(name, 0) + 1
            print(f"chaos: {time.monotonic() - self.started:7.1f}s {what}", flush=True)
            time.sleep(self.rng.uniform(0.05, 0.6))

    def run(self) -> bool:
        self.started = time.monotonic()
        self.srv.start()
        self.master = self.srv.pid
        self.srv.tree()  # its session: signals go to this server's processes only
        self.sampling.set()
        sampler = threading.Thread(target=self.sampler, daemon=True)
        sampler.start()
        try:
            self.srv.until(lambda: self.manager() and self.srv.starts(SINGLETON), timeout=60,
                           message="the manager and the singleton")
            self.settle()
            phase_b = self.started + self.seconds * (1 - KEEP_MANAGER_SHARE)
            self.run_faults(phase_b, phase_a=True)
            if not self.violations:
                self.settle()
                baseline = self.manager_figures()
                print(f"chaos: baseline manager {baseline[0]}: RSS {baseline[1]} kB, "
                      f"{baseline[2]} fds", flush=True)
                self.run_faults(self.started + self.seconds, phase_a=False)
                self.settle()
                self.check_manager_flat(baseline)
            self.check_serving()
        except Exception:
            self.violated("driver", traceback.format_exc())
        finally:
            self.sampling.clear()
            sampler.join()
            self.undo_faults(everything=True)
        self.final_term()
        return not self.violations

    def check_manager_flat(self, baseline) -> None:
        manager, rss, fds = self.manager_figures()
        print(f"chaos: final manager {manager}: RSS {rss} kB, {fds} fds", flush=True)
        if manager != baseline[0]:
            self.violated("manager survives", f"manager {baseline[0]} was replaced by {manager} "
                          "while nothing killed it:\n" + self.log_tail())
            return
        if rss - baseline[1] > RSS_TOLERANCE_KB:
            self.violated("manager RSS flat", f"{baseline[1]} kB -> {rss} kB "
                          f"(tolerance {RSS_TOLERANCE_KB} kB)")
        try:
            wait_until(lambda: self.manager_figures()[2] <= baseline[2], timeout=FD_SETTLE_SECONDS,
                       message="the manager's fd count to return to the baseline")
        except AssertionError:
            fds = sorted(os.readlink(f"/proc/{manager}/fd/{fd}")
                         for fd in os.listdir(f"/proc/{manager}/fd"))
            self.violated("manager fds flat", f"{baseline[2]} -> {len(fds)} fds: {fds}")

    def check_serving(self) -> None:
        try:
            body = self.srv.http_get()
            if b"hello from the web" not in body:
                self.violated("HTTP serves", repr(body[:300]))
        except OSError as exc:
            self.violated("HTTP serves", repr(exc))
        try:
            self.status()
        except Exception as exc:
            self.violated("control answers", repr(exc))

    def final_term(self) -> None:
        """TERM to the master; then nothing of its tree may be left."""
        self.srv.tree()  # note every session while the master still leads them
        if alive(self.master):
            self.send(self.master, signal.SIGTERM)
            try:
                wait_until(lambda: not alive(self.master), timeout=60, message="the master to exit")
            except AssertionError:
                self.violated("master exits on TERM", f"master {self.master} still alive after "
                              f"60s:\n{self.log_tail()}")
        try:
            wait_until(lambda: not live_tree(self.srv.sessions), timeout=10,
                       message="the tree to be gone")
        except AssertionError:
            left = [f"{p} {cmdline(p)!r} ({(proc_stat(p) or ['?'])[0]})"
                    for p in live_tree(self.srv.sessions)]
            self.violated("nothing left after TERM", "\n".join(left))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.srv.log().splitlines()[-lines:])

    def cleanup(self) -> None:
        self.srv.cleanup()  # SIGKILL for anything left, whatever happened
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.disk)], check=False)
        shutil.rmtree(self.sock.parent, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"chaos: seed {seed}, {args.minutes:g} minutes (repeat: make chaos SEED={seed} "
          f"MINUTES={args.minutes:g})", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gc-chaos-"))
    soak = Soak(seed, args.minutes, root)
    try:
        passed = soak.run()
    finally:
        soak.cleanup()
    faults = sum(soak.counts.values())
    summary = ", ".join(f"{n} {c}" for n, c in sorted(soak.counts.items()))
    print(f"chaos: {faults} faults ({summary}); {soak.samples} samples, "
          f"singleton at most {soak.most_singletons} at once", flush=True)
    if passed:
        shutil.rmtree(root, ignore_errors=True)
        print(f"chaos: PASS seed {seed}, {args.minutes:g} minutes", flush=True)
        return 0
    print(f"--- server log tail ({root / 'server.log'}, kept) ---\n{soak.log_tail()}", flush=True)
    # The evidence again, last: a CI log shows only its end
    for check, evidence in sorted(soak.violations.items()):
        print(f"chaos: VIOLATED {check}: {evidence}", flush=True)
    checks = sorted(soak.violations)
    print(f"chaos: FAIL seed {seed}: {', '.join(checks)} "
          f"(repeat: make chaos SEED={seed} MINUTES={args.minutes:g})", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
