#!/usr/bin/env python3
"""Benchmark gunicorn-companion against supervisord and circus.

    python benchmarks/run.py            # full run (about 45 minutes)
    python benchmarks/run.py --quick    # reduced run, about four minutes: a smoke test

Writes a markdown table (and a PNG of memory against K) to benchmarks/results/
and prints the table. Exits 0 when every measurement ran, 1 when one did not
(the figures themselves never fail the run), 2 when the dependencies are missing.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# import name -> distribution, all from the `bench` extra of pyproject.toml
REQUIRED = {
    "gunicorn_companion": "gunicorn-companion",
    "gunicorn": "gunicorn",
    "supervisor": "supervisor",
    "circus": "circus",
    "zmq": "pyzmq",
    "django": "django",
    "rest_framework": "djangorestframework",
    "sqlalchemy": "sqlalchemy",
    "pydantic": "pydantic",
    "requests": "requests",
    "matplotlib": "matplotlib",
    "setproctitle": "setproctitle",
}
EXECUTABLES = ("gunicorn-companion", "supervisord", "supervisorctl", "circusd", "circusctl")


def check_environment() -> list[str]:
    problems = []
    if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/smaps_rollup"):
        problems.append("Linux with /proc/PID/smaps_rollup (kernel 4.14+) is required")
    missing = [dist for mod, dist in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        problems.append(f"missing Python packages: {', '.join(missing)}")
    bindir = os.path.dirname(sys.executable)
    absent = [name for name in EXECUTABLES if not os.access(os.path.join(bindir, name), os.X_OK)]
    if absent and not missing:
        problems.append(f"missing commands next to {sys.executable}: {', '.join(absent)} "
                        "(run this script with the Python of the environment the bench extra "
                        "is installed in)")
    return problems


def expected_figures(plan) -> list[tuple[str, str]]:
    """Every (figure, system) a complete run has at least one sample of."""
    from harness.suite import CAT, CEILINGS, CIRCUS, COMPANIONS, SUPERVISORD, output_figure

    three = (COMPANIONS, SUPERVISORD, CIRCUS)
    wanted = []
    for k in plan.ks:
        for fig in (f"mem_start_k{k}", f"mem_hold_k{k}", f"boot_k{k}"):
            wanted += [(fig, s) for s in three]
    for k in plan.shutdown_ks:
        wanted += [(f"shutdown_k{k}", s) for s in three]
    for k in plan.latency_ks:
        for fig in (f"start_cli_k{k}", f"start_api_k{k}", f"restart_k{k}"):
            wanted += [(fig, s) for s in three]
    n = plan.ctl_programs
    for fig in (f"status_cli_{n}", f"status_api_{n}", f"status_api_reused_{n}",
                f"status_api_brief_{n}", f"idle_cpu_{n}", f"daemon_pss_{n}"):
        wanted += [(fig, s) for s in three]
    m = plan.scale_programs
    wanted += [(f"scale_running_{m}", COMPANIONS), (f"scale_manager_pss_{m}", COMPANIONS)]
    for stamped in (False, True):
        for count in plan.output_counts:
            figure = output_figure(count, stamped)
            for system in (COMPANIONS, CIRCUS) if stamped else three:
                wanted += [(f"{figure}_{what}", system) for what in ("mbps", "cpu", "lost", "torn")]
            if not stamped:
                wanted += [(f"{figure}_mbps", sink) for sink in CEILINGS]
                wanted.append((f"{figure}_cpu", CAT))
    wanted += [("hup_reload", COMPANIONS), ("hup_reload", "gunicorn")]
    wanted += [(f"reread_running_{n}", COMPANIONS) for n in plan.reread_sizes]
    return wanted


def rerender(path: str, output: str) -> int:
    sys.path.insert(0, HERE)
    from harness import report
    from harness.results import Results
    from harness.suite import Plan

    with open(path) as f:
        saved = json.load(f)
    results = Results()
    for entry in saved["series"]:
        for value in entry["values"]:
            results.add(entry["figure"], entry["system"], value)
    results.failures, results.notes, results.facts = (saved["failures"], saved["notes"],
                                                      saved["facts"])
    quick = results.facts.get("mode") == "quick"
    plan = Plan.quick_plan() if quick else Plan.full()
    text, _ = report.render(results, plan, float(results.facts.get("elapsed_seconds") or 0))
    stem = "quick" if quick else "latest"
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, f"{stem}.md"), "w") as f:
        f.write(text)
    report.plot(results, plan, os.path.join(output, f"{stem}-memory.png"))
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="reduced run (about four minutes): checks that everything runs")
    parser.add_argument("--output", default=os.path.join(HERE, "results"),
                        help="where to write the table, the JSON samples and the plot "
                             "(default: benchmarks/results)")
    parser.add_argument("--only", action="append",
                        choices=("memory", "control", "scale", "output", "reload"),
                        help="run only this phase (repeatable; for working on the benchmark)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs and logs) for inspection")
    parser.add_argument("--from-json", metavar="FILE",
                        help="measure nothing: render the table and the plot again from the "
                             "samples a run saved (results/latest.json)")
    args = parser.parse_args(argv)
    if args.from_json:
        return rerender(args.from_json, args.output)

    problems = check_environment()
    if problems:
        print("benchmarks/run.py cannot run:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print("Install the benchmark dependencies (the `bench` extra) into a virtualenv and run "
              "this script with its Python, from the repository root:\n"
              "    python3 -m venv .venv-bench\n"
              "    .venv-bench/bin/pip install -e '.[bench]'\n"
              "    .venv-bench/bin/python benchmarks/run.py --quick", file=sys.stderr)
        return 2

    sys.path.insert(0, HERE)
    from harness import proc, report
    from harness.results import Results
    from harness.runtime import Interrupted, Run, install_interrupts
    from harness.suite import Plan, Suite, log

    plan = Plan.quick_plan() if args.quick else Plan.full()
    phases = args.only or ["memory", "control", "scale", "output", "reload"]
    results = Results()
    started = time.monotonic()
    install_interrupts()
    run = Run(keep=args.keep)
    interrupted = None
    log(f"{'quick' if args.quick else 'full'} run; temporary directory {run.root}")
    try:
        suite = Suite(run, plan, results)
        log("companion_gc_freeze: " + ("available" if suite.freeze.available else
                                       "not in this build (reported as n/a)"))
        if "memory" in phases:
            suite.memory_phase()
        if "control" in phases:
            suite.control_phase()
        if "scale" in phases:
            suite.scale_phase()
        if "output" in phases:
            suite.output_phase()
        if "reload" in phases:
            suite.reload_phase()
    except (KeyboardInterrupt, Interrupted) as exc:
        interrupted = exc
        results.fail("run", f"interrupted ({exc or 'Ctrl-C'})")
    finally:
        run.close()
        left = proc.marked_pids(run.marker)
        if left:
            results.fail("cleanup", f"processes left after cleanup: {left}; killing them")
            proc.kill_trees(left, run.marker)
    if interrupted is not None:
        log("interrupted: everything started was stopped; no report written")
        return 130

    if not args.only:
        for figure, system in expected_figures(plan):
            series = results.get(figure, system)
            if not series or not series.values:
                results.fail("missing figure", f"{figure} for {system}")

    elapsed = time.monotonic() - started
    results.facts["loadavg_end"] = os.getloadavg()
    results.facts["elapsed_seconds"] = round(elapsed, 1)
    text, verdicts = report.render(results, plan, elapsed)
    os.makedirs(args.output, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    md_path = os.path.join(args.output, f"{stem}.md")
    with open(md_path, "w") as f:
        f.write(text)
    with open(os.path.join(args.output, f"{stem}.json"), "w") as f:
        json.dump(results.to_json(), f, indent=1)
    png_path = os.path.join(args.output, f"{stem}-memory.png")
    try:
        report.plot(results, plan, png_path)
    except Exception as exc:
        results.fail("plot", f"{type(exc).__name__}: {exc}")
    print()
    print(text)
    print(f"Written: {md_path}, {png_path}")
    log(f"done in {elapsed:.0f}s")
    if results.failures:
        print(f"\n{len(results.failures)} measurement(s) did not run:", file=sys.stderr)
        for failure in results.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
