"""The measurements. Each phase starts its own daemons, measures, shuts them
down, and cleans up whatever is left in a ``finally`` block; a phase that
fails is recorded and the others still run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

from workload.chatty import LINE_BYTES, check_lines

from . import proc
from .results import Results
from .runtime import BenchError, Run, executable, wait_until
from .systems import (
    Circus,
    GunicornServer,
    OutputOptions,
    Supervisord,
    System,
    chatty_programs,
    idle_programs,
    raw_call,
    workload_programs,
)

COMPANIONS, SUPERVISORD, CIRCUS = "companions", "supervisord", "circus"
# The output programs with no supervisor: stdout to /dev/null, and piped to `cat > file`.
DEVNULL, CAT = "no supervisor, /dev/null", "no supervisor, cat > file"
CEILINGS = (DEVNULL, CAT)
LATENCY_PROGRAM = "worker-0"
BRIEF_WITH_PID = ("name", "state", "pid")
HUP_SETTLE = 0.4  # seconds between one reload's old workers exiting and the next SIGHUP
# A companion left at the default restart_delay (1 s): its kill-to-ready minus
# the delay shows that the delay only adds to detection + spawn.
DELAYED_PROGRAM, DEFAULT_DELAY = "scheduler-1", 1.0


@dataclasses.dataclass(frozen=True)
class Plan:
    quick: bool
    ks: tuple[int, ...] = (4, 16)
    mem_reps: int = 3  # repetitions of the memory/latency/shutdown phase
    hold: float = 60.0  # seconds between the two memory readings
    full_gc_every: float = 10.0  # the workload's full-collection period
    latency_ks: tuple[int, ...] = (4, 16)
    latency_reps: int = 2  # start/restart samples per instance
    shutdown_ks: tuple[int, ...] = (4, 16)
    ctl_programs: int = 200
    ctl_reps: int = 3
    idle_window: float = 60.0
    status_cli_n: int = 20
    status_api_n: int = 200
    scale_programs: int = 500
    scale_reps: int = 3
    scale_shutdown: bool = True  # time the shutdown of the 500 (else just kill them)
    settle: float = 1.0
    boot_timeout: float = 180.0
    output_seconds: float = 10.0  # how long each chatty program prints
    output_counts: tuple[int, ...] = (1, 4)  # chatty programs at once
    output_reps: int = 2
    output_maxbytes: int = 50 * 1024 * 1024
    output_backups: int = 2
    reload_companions: int = 8  # configured and unchanged during the HUP reload
    reload_workers: int = 2  # HTTP workers
    reload_reps: int = 10  # HUPs per server
    reread_sizes: tuple[int, ...] = (10, 50, 200)  # companions configured; one changes
    reread_reps: int = 5

    @classmethod
    def full(cls) -> "Plan":
        return cls(quick=False)

    @classmethod
    def quick_plan(cls) -> "Plan":
        return cls(quick=True, ks=(4, 8), mem_reps=1, hold=1.5, full_gc_every=0.5,
                   latency_ks=(4,), scale_shutdown=False,
                   latency_reps=1, shutdown_ks=(4,), ctl_reps=1, idle_window=2.0,
                   status_cli_n=3, status_api_n=20, scale_reps=1, settle=0.3,
                   output_seconds=2.0, output_reps=1, reload_reps=12, reread_reps=3)


# -- gc_freeze detection -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GcFreeze:
    available: bool
    default: bool | None  # the setting's default, when the help says it


def detect_gc_freeze() -> GcFreeze:
    """Is ``companion_gc_freeze`` a setting of the installed package? Asked of
    ``gunicorn-companion serve --help``, which lists every companion setting."""
    try:
        done = subprocess.run([executable("gunicorn-companion"), "serve", "--help"],
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError, BenchError):
        return GcFreeze(False, None)
    text = done.stdout.decode("utf-8", "replace")
    match = re.search(r"--(?:no-)?companion-gc-freeze\b(.*?)(?=\n\s*-|\Z)", text, re.S)
    if match is None:
        return GcFreeze("gc_freeze" in text or "gc-freeze" in text, None)
    default = re.search(r"\[(True|False)\]", match.group(1))
    return GcFreeze(True, None if default is None else default.group(1) == "True")


# -- helpers -------------------------------------------------------------------------------


def stop_instance(system: System | None) -> None:
    """End an instance whatever state it is in (a no-op once it shut down)."""
    if system is None or system.popen is None:
        return
    try:
        system.close_clients()
    except Exception:
        pass
    if system.popen.poll() is None:
        proc.kill_trees([system.popen.pid], None)
    try:
        system.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        system.popen.kill()
        system.popen.wait(timeout=10)


def sleep_until(when: float) -> None:
    while True:
        left = when - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 1.0))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Suite:
    def __init__(self, run: Run, plan: Plan, results: Results):
        self.run = run
        self.plan = plan
        self.results = results
        self.freeze = detect_gc_freeze()
        run.extra_env["WORKLOAD_FULL_GC_EVERY"] = str(plan.full_gc_every)
        results.facts.update({
            "mode": "quick" if plan.quick else "full",
            "hold_seconds": plan.hold,
            "full_gc_every": plan.full_gc_every,
            "gc_freeze_available": self.freeze.available,
            "gc_freeze_default": self.freeze.default,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        })

    def companion_variants(self) -> list[tuple[str, dict, bool]]:
        """(label, extra settings, is it the main companions row) for the memory phase."""
        base = {"companion_restart_delay": 0}
        if not self.freeze.available:
            return [(COMPANIONS, base, True)]
        main_on = self.freeze.default is not False
        return [
            (f"{COMPANIONS} gc_freeze=on", {**base, "companion_gc_freeze": True}, main_on),
            (f"{COMPANIONS} gc_freeze=off", {**base, "companion_gc_freeze": False}, not main_on),
        ]

    def guard(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except BenchError as exc:
            log(f"FAILED {what}: {exc}")
            self.results.fail(what, exc)
        except Exception as exc:
            log(f"FAILED {what}: {type(exc).__name__}: {exc}")
            self.results.fail(what, f"{type(exc).__name__}: {exc}")

    # -- phase 1: memory, start/restart latency, shutdown, with K workload processes ----

    def memory_phase(self) -> None:
        for rep in range(self.plan.mem_reps):
            for k in self.plan.ks:
                self.guard(f"memory K={k} rep {rep + 1}", self.memory_round, k, rep)

    def memory_round(self, k: int, rep: int) -> None:
        plan, results = self.plan, self.results
        programs = workload_programs(k)
        latency = k in plan.latency_ks
        base = None
        try:
            base = GunicornServer(self.run, [], f"base-k{k}-r{rep}")
            base.launch()
            base.wait_up(plan.boot_timeout)
            time.sleep(plan.settle)
            base_pss = base.tree_pss_kib()
            results.add("base_pss", "gunicorn", base_pss / 1024)
            log(f"K={k} rep {rep + 1}: web server alone {base_pss / 1024:.1f} MiB PSS")
            others = [Supervisord, Circus] if rep % 2 == 0 else [Circus, Supervisord]
            for cls in others:
                system = cls(self.run, programs, f"k{k}-r{rep}")
                self.guard(f"{system.label} K={k} rep {rep + 1}", self.measure_instance,
                           system, system.label, k, base, base_pss, latency)
            results.add("shutdown_base", "gunicorn", base.shutdown())
        finally:
            stop_instance(base)
        for label, settings, main in self.companion_variants():
            system = GunicornServer(self.run, programs, f"k{k}-r{rep}", settings=settings,
                                    per_program={DELAYED_PROGRAM: {"restart_delay": DEFAULT_DELAY}})
            self.guard(f"{label} K={k} rep {rep + 1}", self.measure_instance, system, label, k,
                       None, base_pss, latency and main, main)

    def measure_instance(self, system: System, label: str, k: int, alongside: System | None,
                         base_pss: int, latency: bool, main: bool = True) -> None:
        plan = self.plan
        # The main companions variant (gc_freeze at its default) is also the
        # "companions" column; the other variant only has its own row.
        labels = [label] + ([COMPANIONS] if main and label.startswith(COMPANIONS + " ") else [])
        results = _Fanout(self.results, labels)
        try:
            system.launch()
            if isinstance(system, GunicornServer):
                system.wait_up(plan.boot_timeout)
            ready = system.wait_all_ready(plan.boot_timeout)
            all_ready = max(line.mono for line in ready.values())
            if main:
                results.add(f"boot_k{k}", all_ready - system.launched_at)
            time.sleep(plan.settle)

            def added_mib() -> float:
                total = system.tree_pss_kib()
                if alongside is not None:
                    total += alongside.tree_pss_kib()
                return (total - base_pss) / 1024

            start_mib = added_mib()
            results.add(f"mem_start_k{k}", start_mib)
            sleep_until(all_ready + plan.hold)
            system.check_alive()
            hold_mib = added_mib()
            results.add(f"mem_hold_k{k}", hold_mib)
            log(f"  {label:<26} K={k}: +{start_mib:7.1f} MiB at start, "
                f"+{hold_mib:7.1f} MiB after {plan.hold:g}s")
            if latency:
                self.latency_tests(system, labels, k)
            if main and k in plan.shutdown_ks:
                system.wait_all_running(60)
                seconds = system.shutdown()
                results.add(f"shutdown_k{k}", seconds)
                log(f"  {label:<26} K={k}: shutdown {seconds:.3f}s")
        finally:
            stop_instance(system)

    def latency_tests(self, system: System, labels: list[str], k: int) -> None:
        results, name, label = _Fanout(self.results, labels), LATENCY_PROGRAM, labels[0]
        system.wait_all_running(60)
        for _ in range(self.plan.latency_reps):
            # start through the CLI (a whole CLI process), after a stop
            old = system.program_pid(name)
            system.cli_stop(name)
            t0 = time.monotonic()
            system.cli_start(name)
            line = system.ready.wait_for(name, 60, not_pid=old, after=t0)
            results.add(f"start_cli_k{k}", line.mono - t0)
            # start through the API (raw socket / XML-RPC / ZeroMQ), after a stop
            system.wait_all_running(60)
            old = line.pid
            system.cli_stop(name)
            t0 = time.monotonic()
            api_start(system, name)
            line = system.ready.wait_for(name, 60, not_pid=old, after=t0)
            results.add(f"start_api_k{k}", line.mono - t0)
            # SIGKILL, then the automatic restart
            system.wait_all_running(60)
            time.sleep(0.2)
            old = line.pid
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            line = system.ready.wait_for(name, 60, not_pid=old, after=t0)
            results.add(f"restart_k{k}", line.mono - t0)
            if line.forked is not None:
                results.add(f"restart_fork_k{k}", max(0.0, line.forked - t0))
            system.wait_all_running(60)
            if isinstance(system, GunicornServer) and DELAYED_PROGRAM in system.names:
                time.sleep(0.2)
                old = system.program_pid(DELAYED_PROGRAM)
                t0 = time.monotonic()
                os.kill(old, signal.SIGKILL)
                line = system.ready.wait_for(DELAYED_PROGRAM, 60, not_pid=old, after=t0)
                results.add(f"restart_delayed_k{k}", line.mono - t0 - DEFAULT_DELAY)
                system.wait_all_running(60)
        log(f"  {label:<26} K={k}: start(cli) {results.last(f'start_cli_k{k}'):.3f}s"
            f", restart {results.last(f'restart_k{k}'):.3f}s")

    # -- phase 2: 200 idle programs: idle CPU, status latency ----------------------------

    def control_phase(self) -> None:
        for rep in range(self.plan.ctl_reps):
            self.guard(f"control rep {rep + 1}", self.control_round, rep)

    def control_round(self, rep: int) -> None:
        plan, results, n = self.plan, self.results, self.plan.ctl_programs
        programs = idle_programs(n)
        systems: list[System] = []
        try:
            systems = [
                GunicornServer(self.run, programs, f"ctl-r{rep}", app="workload.tiny:application",
                               settings={"companion_restart_delay": 0}),
                Supervisord(self.run, programs, f"ctl-r{rep}"),
                Circus(self.run, programs, f"ctl-r{rep}"),
            ]
            for system in systems:
                system.launch()
            systems[0].wait_up(plan.boot_timeout)
            for system in systems:
                system.wait_all_running(plan.boot_timeout)
            log(f"control rep {rep + 1}: {n} programs running under each of "
                f"{', '.join(s.label for s in systems)}")
            time.sleep(max(plan.settle, 2.0))
            daemons = {s.label: s.daemon_pid() for s in systems}
            cpu0 = {label: (proc.cpu_seconds(pid), proc.cpu_ns(pid))
                    for label, pid in daemons.items()}
            t0 = time.monotonic()
            time.sleep(plan.idle_window)
            elapsed = time.monotonic() - t0
            for label, pid in daemons.items():
                ticks, ns = proc.cpu_seconds(pid), proc.cpu_ns(pid)
                if ticks is None or cpu0[label][0] is None:
                    raise BenchError(f"the {label} daemon (pid {pid}) exited while idle")
                results.add(f"idle_cpu_{n}", label, 100.0 * (ticks - cpu0[label][0]) / elapsed)
                if ns is not None and cpu0[label][1] is not None:
                    results.add(f"idle_cpu_ns_{n}", label,
                                100.0 * (ns - cpu0[label][1]) / 1e9 / elapsed)
                results.add(f"daemon_pss_{n}", label, proc.pss_kib(pid) / 1024)
                results.add(f"daemon_rss_{n}", label, proc.rss_kib(pid) / 1024)
            log("  idle CPU: " + ", ".join(
                f"{label} {results.get(f'idle_cpu_{n}', label).values[-1]:.3f}%"
                for label in daemons))
            for _ in range(plan.status_cli_n):
                for system in systems:
                    results.add(f"status_cli_{n}", system.label, system.cli_status())
            for _ in range(plan.status_api_n):
                for system in systems:
                    results.add(f"status_api_{n}", system.label, system.api_status(reuse=False))
            for _ in range(plan.status_api_n):
                for system in systems:
                    results.add(f"status_api_reused_{n}", system.label,
                                system.api_status(reuse=True))
                    # circus's status is already brief: {name: "active"}
                    brief = (systems[0].api_status(reuse=True, brief=True)
                             if system is systems[0] else results.get(
                                 f"status_api_reused_{n}", system.label).values[-1])
                    results.add(f"status_api_brief_{n}", system.label, brief)
            log("  status: " + ", ".join(
                f"{s.label} cli {results.get(f'status_cli_{n}', s.label).median * 1000:.1f} ms "
                f"api {results.get(f'status_api_{n}', s.label).median * 1000:.2f} ms "
                f"(reused {results.get(f'status_api_reused_{n}', s.label).median * 1000:.2f} ms, "
                f"brief {results.get(f'status_api_brief_{n}', s.label).median * 1000:.2f} ms)"
                for s in systems))
            # no shutdown timing here: supervisord takes minutes to stop 200 programs
            # (about one per turn of its 1 s loop); stop_instance() kills the trees
        finally:
            for system in systems:
                stop_instance(system)

    # -- phase 4: output: programs printing as fast as they can ----------------------------

    def output_phase(self) -> None:
        for rep in range(self.plan.output_reps):
            for stamped in (False, True):
                for count in self.plan.output_counts:
                    systems = [COMPANIONS, CIRCUS] if stamped else [COMPANIONS, SUPERVISORD, CIRCUS]
                    if rep % 2:
                        systems.reverse()
                    for label in systems:
                        self.guard(f"output {label} {count} program(s)"
                                   f"{' time-stamped' if stamped else ''} rep {rep + 1}",
                                   self.output_round, label, count, stamped, rep)
                    if not stamped:
                        for sink in CEILINGS:
                            self.guard(f"output ceiling {sink} {count} program(s) rep {rep + 1}",
                                       self.ceiling_round, sink, count, rep)

    def output_round(self, label: str, count: int, stamped: bool, rep: int) -> None:
        plan, results = self.plan, self.results
        figure = output_figure(count, stamped)
        options = OutputOptions(plan.output_maxbytes, plan.output_backups, stamped)
        tag = f"out-p{count}{'-ts' if stamped else ''}-r{rep}"
        programs = chatty_programs(count)
        if label == COMPANIONS:
            system: System = GunicornServer(self.run, programs, tag,
                                            app="workload.tiny:application", output=options)
        elif label == SUPERVISORD:
            system = Supervisord(self.run, programs, tag, output=options)
        else:
            system = Circus(self.run, programs, tag, output=options)
        go, done = os.path.join(system.dir, "go"), os.path.join(system.dir, "done.jsonl")
        system.env.update(CHATTY_SECONDS=str(plan.output_seconds), CHATTY_GO=go, CHATTY_DONE=done)
        try:
            system.launch()
            if isinstance(system, GunicornServer):
                system.wait_up(plan.boot_timeout)
            system.wait_all_running(plan.boot_timeout)
            time.sleep(plan.settle)
            daemon = system.daemon_pid()
            cpu0 = proc.cpu_ns(daemon)
            with open(go, "w"):
                pass
            written = wait_written(done, count, plan.output_seconds + 120, system)
            reached = wait_last_lines(system, written, 120)
            cpu1 = proc.cpu_ns(daemon)
            if cpu0 is None or cpu1 is None:
                raise BenchError(f"the {label} daemon (pid {daemon}) exited while writing")
            started = min(w["started"] for w in written.values())
            total = sum(w["lines"] for w in written.values()) * LINE_BYTES
            results.add(f"{figure}_mbps", label, total / 1e6 / (reached - started))
            results.add(f"{figure}_cpu", label, (cpu1 - cpu0) / 1e9 / (total / 100e6))
            lost = torn = 0
            for name, record in written.items():
                _, missing, cut = check_lines(system.log_paths(name), name, record["lines"],
                                              stamped)
                lost, torn = lost + missing, torn + cut
            results.add(f"{figure}_lost", label, lost)
            results.add(f"{figure}_torn", label, torn)
            log(f"  output {label:<12} {count} program(s){' time-stamped' if stamped else ''}: "
                f"{results.get(f'{figure}_mbps', label).values[-1]:.0f} MB/s, "
                f"{results.get(f'{figure}_cpu', label).values[-1]:.2f} CPU s per 100 MB, "
                f"{lost} lost, {torn} torn")
        finally:
            stop_instance(system)
            shutil.rmtree(os.path.join(system.dir, "logs"), ignore_errors=True)  # up to GBs

    def ceiling_round(self, sink: str, count: int, rep: int) -> None:
        """The same programs with no supervisor: what rate they reach on their
        own (stdout to /dev/null) and through a pipe that `cat` copies to a file
        (the least a supervisor writing a file can do). No supervisor can get
        more through than the first; the throughput targets are read against it."""
        plan = self.plan
        figure = output_figure(count, False)
        workdir = self.run.workdir(f"ceiling-{sink}-p{count}-r{rep}")
        go, done = os.path.join(workdir, "go"), os.path.join(workdir, "done.jsonl")
        popens = []
        try:
            # One shell, so one session: with the kernel's autogroup scheduling
            # a session shares the CPU with the machine's others as a whole, as
            # a supervisor with its programs does; a session each would get
            # the programs more of the machine than any supervisor's get.
            pipelines = []
            for program in chatty_programs(count):
                path = os.path.join(workdir, "logs", f"{program.name}.log")
                pipelines.append(
                    f"WORKLOAD_NAME={program.name} " + shlex.join(program.argv)
                    + (" > /dev/null" if sink == DEVNULL else f" | cat > {shlex.quote(path)}"))
            env = self.run.env(workdir, {"CHATTY_SECONDS": str(plan.output_seconds),
                                         "CHATTY_GO": go, "CHATTY_DONE": done})
            popens.append(self.run.spawn(["/bin/sh", "-c", " & ".join(pipelines) + " & wait"],
                                         env=env, cwd=workdir,
                                         log=os.path.join(workdir, "programs.err")))
            time.sleep(plan.settle)  # the interpreters started, waiting for the go file
            cats = [pid for popen in popens for pid in proc.tree(popen.pid) if _comm(pid) == "cat"]
            cpu0 = [proc.cpu_ns(pid) for pid in cats]
            with open(go, "w"):
                pass
            written = wait_written(done, count, plan.output_seconds + 120, _Alive(popens))
            total = sum(w["lines"] for w in written.values()) * LINE_BYTES
            started = min(w["started"] for w in written.values())
            if sink == DEVNULL:
                reached = max(w["finished"] for w in written.values())
            else:
                reached = wait_last_lines(_Files(workdir), written, 120)
                cpu1 = [proc.cpu_ns(pid) for pid in cats]
                if len(cats) != count or None in cpu0 + cpu1:
                    raise BenchError(f"cannot read the CPU of the {count} cat process(es)")
                self.results.add(f"{figure}_cpu", sink, (sum(cpu1) - sum(cpu0)) / 1e9
                                 / (total / 100e6))
            self.results.add(f"{figure}_mbps", sink, total / 1e6 / (reached - started))
            log(f"  output ceiling {sink:<12} {count} program(s): "
                f"{self.results.get(f'{figure}_mbps', sink).values[-1]:.0f} MB/s"
                + (f", cat's CPU {self.results.get(f'{figure}_cpu', sink).values[-1]:.2f} s "
                   "per 100 MB" if sink == CAT else ""))
        finally:
            proc.kill_trees([p.pid for p in popens if p.poll() is None], None)
            for popen in popens:
                popen.wait(timeout=10)
            shutil.rmtree(os.path.join(workdir, "logs"), ignore_errors=True)

    # -- phase 5: reloads ---------------------------------------------------------------

    def reload_phase(self) -> None:
        for rep in range(2 if self.plan.quick else 3):
            for label in ((COMPANIONS, "gunicorn") if rep % 2 == 0 else ("gunicorn", COMPANIONS)):
                self.guard(f"HUP reload {label} rep {rep + 1}", self.hup_round, label, rep)
        for n in self.plan.reread_sizes:
            self.guard(f"reread of {n} companions", self.reread_round, n)

    def hup_round(self, label: str, rep: int) -> None:
        """SIGHUP to the master until every new HTTP worker is about to serve:
        the same app and config, with 8 unchanged companions or with plain Gunicorn."""
        plan = self.plan
        companions = label == COMPANIONS
        count = plan.reload_companions if companions else 0
        system = GunicornServer(self.run, idle_programs(count), f"hup-{label}-r{rep}",
                                app="workload.tiny:application", plain=not companions,
                                workers=plan.reload_workers,
                                settings={"companion_restart_delay": 0} if companions else {})
        try:
            system.launch()
            system.wait_up(plan.boot_timeout)
            if companions:
                system.wait_all_running(plan.boot_timeout)
            wait_until(lambda: len(system.workers_ready()) >= plan.reload_workers, 60,
                       "the HTTP workers to start")
            time.sleep(plan.settle)
            for _ in range(plan.reload_reps):
                # Gunicorn's reload returns only once the old workers are gone,
                # polling for them every 0.1 s: a SIGHUP sent before that waits
                # in its queue, and the figure would be that poll, not a reload.
                time.sleep(HUP_SETTLE)
                before = system.workers_ready()
                t0 = time.monotonic()
                os.kill(system.pid, signal.SIGHUP)

                def new_workers(before=before) -> dict[int, float]:
                    system.check_alive()
                    return {pid: mono for pid, mono in system.workers_ready().items()
                            if pid not in before}

                wait_until(lambda: len(new_workers()) >= plan.reload_workers, 60,
                           "new HTTP workers after SIGHUP", interval=0.005)
                self.results.add("hup_reload", label, max(new_workers().values()) - t0)
                # the old workers gone and the app answering before the next HUP
                wait_until(lambda before=before: not any(proc.alive(p) for p in before), 60,
                           "the old HTTP workers to exit")
                if not system.http_ok():
                    raise BenchError("the app does not answer after a SIGHUP")
                if companions and len(system.status()) != plan.reload_companions:
                    raise BenchError("companions missing after a SIGHUP")
            log(f"  HUP reload {label:<12}: median "
                f"{self.results.get('hup_reload', label).median * 1000:.1f} ms "
                f"over {len(self.results.get('hup_reload', label).values)} HUPs")
        finally:
            stop_instance(system)

    def reread_round(self, n: int) -> None:
        """Change one companion of ``n`` and reread: until it is RUNNING again,
        and the manager's CPU for the reread (reading the config, the diff)."""
        plan = self.plan
        system = GunicornServer(self.run, idle_programs(n), f"reread-{n}",
                                app="workload.tiny:application",
                                settings={"companion_restart_delay": 0, "companion_startsecs": 0})
        changed = idle_programs(1)[0].name
        try:
            system.launch()
            system.wait_up(plan.boot_timeout)
            system.wait_all_running(plan.boot_timeout)
            manager = system.daemon_pid()
            time.sleep(plan.settle)
            for rep in range(plan.reread_reps):
                old = {e["name"]: e.get("pid") for e in system.status()}[changed]
                system.changed = {changed: {"env": {"WORKLOAD_NAME": changed, "REV": str(rep)}}}
                system.write_config()
                cpu0 = proc.cpu_ns(manager)
                t0 = time.monotonic()
                reply = raw_call(system.control, {"cmd": "reread"})
                answered = time.monotonic()
                cpu1 = proc.cpu_ns(manager)
                if not reply.get("ok"):
                    raise BenchError(f"reread refused: {reply.get('error')}")

                def running(old=old) -> bool:
                    # the brief status: polling the full one of 200 every 2 ms
                    # would be most of what the manager does meanwhile
                    entry = {e["name"]: e for e in system.status(BRIEF_WITH_PID)}[changed]
                    return entry["state"] == "RUNNING" and entry.get("pid") not in (None, old)

                wait_until(running, 60, f"{changed} to run again", interval=0.002)
                self.results.add(f"reread_running_{n}", COMPANIONS, time.monotonic() - t0)
                self.results.add(f"reread_answer_{n}", COMPANIONS, answered - t0)
                if cpu0 is not None and cpu1 is not None:
                    self.results.add(f"reread_cpu_{n}", COMPANIONS, (cpu1 - cpu0) / 1e9)
                system.wait_all_running(60)
            log(f"  reread, 1 of {n} changed: RUNNING after "
                f"{self.results.get(f'reread_running_{n}', COMPANIONS).median * 1000:.1f} ms, "
                f"manager CPU {self.results.get(f'reread_cpu_{n}', COMPANIONS).median * 1000:.1f}"
                " ms")
        finally:
            stop_instance(system)

    # -- phase 3: 500 companions -----------------------------------------------------------

    def scale_phase(self) -> None:
        for rep in range(self.plan.scale_reps):
            self.guard(f"scale rep {rep + 1}", self.scale_round, rep)

    def scale_round(self, rep: int) -> None:
        n, results = self.plan.scale_programs, self.results
        system = GunicornServer(self.run, idle_programs(n), f"scale-r{rep}",
                                app="workload.tiny:application",
                                settings={"companion_restart_delay": 0})
        try:
            system.launch()
            t0 = system.launched_at
            first = forked = running = None
            deadline = t0 + self.plan.boot_timeout
            while running is None:
                system.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{n} companions not all RUNNING within "
                                     f"{self.plan.boot_timeout:g}s")
                try:
                    entries = system.status()
                except (OSError, ValueError):
                    time.sleep(0.02)
                    continue
                now = time.monotonic()
                if first is None:
                    first = now - t0
                if forked is None and len(entries) == n and all(e.get("pid") for e in entries):
                    forked = now - t0
                if len(entries) == n and all(e["state"] == "RUNNING" for e in entries):
                    running = now - t0
                    break
                time.sleep(0.02)
            results.add(f"scale_first_answer_{n}", COMPANIONS, first)
            results.add(f"scale_forked_{n}", COMPANIONS, forked if forked is not None else running)
            results.add(f"scale_running_{n}", COMPANIONS, running)
            manager = system.daemon_pid()
            results.add(f"scale_manager_pss_{n}", COMPANIONS, proc.pss_kib(manager) / 1024)
            results.add(f"scale_manager_rss_{n}", COMPANIONS, proc.rss_kib(manager) / 1024)
            if self.plan.scale_shutdown:
                results.add(f"shutdown_{n}", COMPANIONS, system.shutdown())
            log(f"scale rep {rep + 1}: {n} companions RUNNING {running:.2f}s after launch "
                f"(first status answer {first:.2f}s); manager "
                f"{results.get(f'scale_manager_pss_{n}', COMPANIONS).values[-1]:.1f} MiB PSS")
        finally:
            stop_instance(system)


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


class _Alive:
    """The programs of a ceiling round, in the place of a system for the waits."""

    def __init__(self, popens: list[subprocess.Popen]):
        self.popens = popens

    def check_alive(self) -> None:
        for popen in self.popens:
            if popen.poll() is not None:
                raise BenchError(f"a chatty pipeline exited with status {popen.returncode}")


class _Files:
    """Where a ceiling round's `cat` writes each program's lines."""

    def __init__(self, workdir: str):
        self.workdir = workdir

    def log_paths(self, name: str) -> list[str]:
        return [os.path.join(self.workdir, "logs", f"{name}.log")]


def output_figure(count: int, stamped: bool) -> str:
    return f"output_p{count}{'_ts' if stamped else ''}"


def wait_written(path: str, count: int, timeout: float, system: System) -> dict[str, dict]:
    """What each chatty program reports it wrote, once all ``count`` have."""
    records: dict[str, dict] = {}

    def all_done() -> bool:
        system.check_alive()
        try:
            with open(path) as f:
                for row in f:
                    record = json.loads(row)
                    records[record["name"]] = record
        except FileNotFoundError:
            return False
        return len(records) >= count

    wait_until(all_done, timeout, f"{count} chatty program(s) to finish", interval=0.01)
    return records


def wait_last_lines(system: System, written: dict[str, dict], timeout: float) -> float:
    """The monotonic time at which every program's last line was in its file."""
    waiting = {name: record["lines"] - 1 for name, record in written.items()}

    def arrived() -> bool:
        for name, last in list(waiting.items()):
            if last_number(system.log_paths(name)[-1], name) == last:
                del waiting[name]
        return not waiting

    wait_until(arrived, timeout, "the last lines to reach the files", interval=0.005)
    return time.monotonic()


def last_number(path: str, name: str) -> int | None:
    """The highest line number in the end of a chatty program's log file, once
    the file ends with a newline. Searched for rather than read off the last
    line: a system that tears lines (circus stamps every read, so a line cut
    between two reads gets a second stamp in its middle) may end the file with
    a piece that carries no number."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 4096))
            tail = f.read()
    except FileNotFoundError:
        return None
    if not tail.endswith(b"\n"):
        return None
    numbers = re.findall(re.escape(name.encode()) + rb" (\d{12}) ", tail)
    return max(map(int, numbers)) if numbers else None


class _Fanout:
    """Adds each sample under several system labels."""

    def __init__(self, results: Results, labels: list[str]):
        self.results, self.labels = results, labels

    def add(self, figure: str, value: float) -> None:
        for label in self.labels:
            self.results.add(figure, label, value)

    def last(self, figure: str) -> float:
        return self.results.get(figure, self.labels[0]).values[-1]


def api_start(system: System, name: str) -> None:
    """Ask for a start without a CLI process: what a script or a UI would do."""
    if isinstance(system, GunicornServer):
        from .systems import raw_call

        # answers once RUNNING (after startsecs); the ready line comes long before
        reply = raw_call(system.control, {"cmd": "start", "name": name})
        if not reply.get("ok"):
            raise BenchError(f"raw start {name}: {reply.get('error')}")
    elif isinstance(system, Supervisord):
        system.proxy().supervisor.startProcess(name, False)
    elif isinstance(system, Circus):
        system.call("start", name=name)
    else:  # pragma: no cover
        raise BenchError(f"no API start for {system.label}")
