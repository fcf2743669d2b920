"""The markdown table, the target verdicts and the memory plot."""

from __future__ import annotations

import dataclasses
import math
import time

from .results import Results
from .suite import CAT, CIRCUS, COMPANIONS, DEVNULL, SUPERVISORD, Plan, output_figure

SYSTEMS = (COMPANIONS, SUPERVISORD, CIRCUS)


@dataclasses.dataclass(frozen=True)
class Row:
    figure: str
    title: str
    unit: str  # "MiB", "s", "ms", "%"
    target: str = ""  # the README's wording
    check: object = None  # callable(results) -> (met: bool | None, detail: str)
    texts: dict | None = None  # fixed cell texts by system, for rows that are not measured
    # the systems' columns hold other systems' figures: {column: system measured}
    columns: dict | None = None


def _scale(unit: str) -> float:
    return 1000.0 if unit == "ms" else 1.0


def _num(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2g}"


def _load(values) -> str:
    return "?" if not values else "/".join(f"{v:.1f}" for v in values)


def cell(results: Results, figure: str, system: str, unit: str) -> str:
    series = results.get(figure, system)
    if not series or not series.values:
        return "-"
    k = _scale(unit)
    if len(series.values) == 1:
        return _num(series.median * k)
    return f"{_num(series.median * k)} ({_num(series.low * k)}–{_num(series.high * k)})"


def ratio_cell(results: Results, figure: str, system: str, reference: str = SUPERVISORD) -> str:
    r = results.ratio(figure, system, reference)
    if r is None:
        return "-"
    median, low, high = r
    if low == high:
        return _num(median)
    return f"{_num(median)} ({_num(low)}–{_num(high)})"


# -- target checks --------------------------------------------------------------------------


def ratio_at_most(limit: float, figure: str | None = None):
    def check(results: Results, row: Row):
        r = results.ratio(figure or row.figure, COMPANIONS)
        if r is None:
            return None, "not measured"
        return r[0] <= limit, f"ratio {_num(r[0])} vs ≤ {limit:g}"

    return check


def below_both(results: Results, row: Row):
    mine = results.get(row.figure, COMPANIONS)
    others = [results.get(row.figure, s) for s in (SUPERVISORD, CIRCUS)]
    if not mine or not all(others):
        return None, "not measured"
    return all(mine.median < o.median for o in others), ""


def raw_status_check(results: Results, row: Row):
    r = results.ratio(row.figure, COMPANIONS)
    mine, circus = results.get(row.figure, COMPANIONS), results.get(row.figure, CIRCUS)
    if r is None or not circus:
        return None, "not measured"
    vs_circus = mine.median / circus.median
    return (r[0] <= 0.1 and vs_circus <= 1.0,
            f"÷ supervisord {_num(r[0])} (≤ 0.1), ÷ circus {_num(vs_circus)} (≤ 1)")


def at_most_seconds(limit: float):
    def check(results: Results, row: Row):
        mine = results.get(row.figure, COMPANIONS)
        if not mine:
            return None, "not measured"
        return mine.median <= limit, ""

    return check


def throughput_check(vs_supervisord: float | None):
    """At least ``vs_supervisord`` times supervisord's (paired) and at least circus's."""

    def check(results: Results, row: Row):
        mine, circus = results.get(row.figure, COMPANIONS), results.get(row.figure, CIRCUS)
        if not mine or not circus:
            return None, "not measured"
        vs_circus = mine.median / circus.median if circus.median else math.inf
        details, met = [f"× circus {_num(vs_circus)} (≥ 1)"], vs_circus >= 1.0
        if vs_supervisord is not None:
            r = results.ratio(row.figure, COMPANIONS)
            if r is None:
                return None, "not measured"
            details.insert(0, f"× supervisord {_num(r[0])} (≥ {vs_supervisord:g})")
            met = met and r[0] >= vs_supervisord
            # No supervisor gets more through than the programs print with none,
            # nor more through a pipe than `cat`, the lightest reader there is.
            alone, cat = results.ratio(row.figure, DEVNULL), results.ratio(row.figure, CAT)
            if alone is not None and cat is not None:
                details.append(f"the programs alone: {_num(alone[0])}× supervisord to /dev/null, "
                               f"{_num(cat[0])}× through `cat > file`"
                               + (", so no supervisor reading a pipe can reach the target"
                                  if min(alone[0], cat[0]) < vs_supervisord else ""))
        return met, ", ".join(details)

    return check


def cpu_check(limit: float):
    """At most ``limit`` times supervisord's, beside what `cat` alone costs
    (the least a reader that copies the pipe to the file can spend)."""
    plain = ratio_at_most(limit)

    def check(results: Results, row: Row):
        met, detail = plain(results, row)
        alone = results.ratio(row.figure, CAT)
        if met is not None and alone is not None:
            detail += (f", `cat` alone: {_num(alone[0])} of supervisord's"
                       + (", so no supervisor that copies the lines reaches the target"
                          if alone[0] > limit else ""))
        return met, detail

    return check


def none_lost(results: Results, row: Row):
    """Companions lose and tear nothing; the others' counts are shown beside."""
    mine = results.get(row.figure, COMPANIONS)
    if not mine or not mine.values:
        return None, "not measured"
    others = [f"{s} {sum(results.get(row.figure, s).values):g}" for s in (SUPERVISORD, CIRCUS)
              if results.get(row.figure, s)]
    return sum(mine.values) == 0, ", ".join([f"companions {sum(mine.values):g}", *others])


def against(reference: str, limit: float):
    def check(results: Results, row: Row):
        r = results.ratio(row.figure, COMPANIONS, reference)
        if r is None:
            return None, "not measured"
        return r[0] <= limit, f"÷ {reference} {_num(r[0])} (≤ {limit:g})"

    return check


def flat(small: str, limit: float):
    """The figure at the bigger size at most ``limit`` times the one at the smaller."""

    def check(results: Results, row: Row):
        big, little = results.get(row.figure, COMPANIONS), results.get(small, COMPANIONS)
        if not big or not little or not little.median:
            return None, "not measured"
        growth = big.median / little.median
        return growth <= limit, f"{_num(growth)}× the smaller config's (≤ {limit:g})"

    return check


def output_rows(plan: Plan) -> list[Row]:
    rows = []
    for stamped in (False, True):
        how = "time-stamped" if stamped else "no time stamps"
        for count in plan.output_counts:
            fig = output_figure(count, stamped)
            who = f"{count} program{'s' if count > 1 else ''} printing 100-byte lines, {how}"
            rows += [
                Row(f"{fig}_mbps", f"Output throughput: {who}, MB/s to the files (higher is "
                    "better)", "",
                    "≥ circus" if stamped else "≥ 3× supervisord, ≥ circus",
                    throughput_check(None if stamped else 3.0)),
            ]
            if not stamped:
                rows += [
                    Row(f"{fig}_mbps", f"Output ceiling: {who}, no supervisor, {how_}, MB/s "
                        "(ratio: × supervisord's throughput above)", "",
                        columns={COMPANIONS: sink, SUPERVISORD: SUPERVISORD})
                    for sink, how_ in ((DEVNULL, "stdout to /dev/null"),
                                       (CAT, "stdout piped to `cat > file`"))]
            rows += [
                Row(f"{fig}_cpu", f"Output CPU: {who}, supervising process's CPU s per 100 MB",
                    "", "" if stamped else "≤ 1/3 of supervisord",
                    None if stamped else cpu_check(1 / 3)),
            ]
            if not stamped:
                rows.append(Row(f"{fig}_cpu", f"Output CPU: {who}, no supervisor: `cat` copying "
                                "the pipe to the file, CPU s per 100 MB (ratio: ÷ supervisord's "
                                "above)", "", columns={COMPANIONS: CAT, SUPERVISORD: SUPERVISORD}))
            rows += [
                Row(f"{fig}_lost", f"Output lines lost: {who}", "", "0 (counted for all)",
                    none_lost),
                Row(f"{fig}_torn", f"Output lines torn: {who}", "", "0 (counted for all)",
                    none_lost),
            ]
    return rows


def reload_rows(plan: Plan) -> list[Row]:
    small, big = min(plan.reread_sizes), max(plan.reread_sizes)
    rows = [Row("hup_reload", f"HUP reload: SIGHUP → all {plan.reload_workers} new HTTP workers "
                f"serve; companions: {plan.reload_companions} unchanged; supervisord column: "
                "plain Gunicorn, same app", "ms", "≤ 1.1× plain Gunicorn",
                against("gunicorn", 1.1), columns={COMPANIONS: COMPANIONS,
                                                   SUPERVISORD: "gunicorn"})]
    for n in plan.reread_sizes:
        grows = n == big and big != small
        rows += [
            Row(f"reread_running_{n}", f"Reread changing 1 of {n} companions: request → the "
                "changed one RUNNING (startsecs 0)", "ms",
                f"flat in N (vs {small})" if grows else "",
                flat(f"reread_running_{small}", 1.5) if grows else None),
            Row(f"reread_cpu_{n}", f"Reread changing 1 of {n} companions: manager's CPU "
                "(config read + diff)", "ms"),
        ]
    return rows


def rows_for(plan: Plan) -> list[tuple[str, list[Row]]]:
    hold = f"{plan.hold:g} s"
    memory = []
    for k in plan.ks:
        big = k == max(plan.ks)
        target = "≤ 1/10 of supervisord" if big else ""
        check = ratio_at_most(0.1) if big else None
        memory.append(Row(f"mem_start_k{k}", f"K={k}: right after start", "MiB", target, check))
        memory.append(Row(f"mem_hold_k{k}", f"K={k}: after {hold} with GC active", "MiB", target,
                          check))
    latency = []
    for k in plan.latency_ks:
        latency += [
            Row(f"start_cli_k{k}", f"K={k}: start, CLI request → ready line", "ms",
                "≥ 20× faster than supervisord", ratio_at_most(0.05)),
            Row(f"start_api_k{k}", f"K={k}: start, API request → ready line", "ms"),
            Row(f"restart_k{k}", f"K={k}: SIGKILL → new process's ready line", "ms",
                "≥ 20× faster than supervisord", ratio_at_most(0.05)),
            Row(f"restart_fork_k{k}", f"K={k}: SIGKILL → new process forked (±10 ms)", "ms"),
            Row(f"restart_delayed_k{k}", f"K={k}: SIGKILL → ready with restart_delay = 1 s "
                "(the default), minus the delay", "ms"),
        ]
    latency.append(Row("restart_delay", "Restart: configured delay", "", texts={
        COMPANIONS: "0 s (`restart_delay = 0`)",
        SUPERVISORD: "none (no setting; restarts on its 1 s loop)",
        CIRCUS: "none (respawn polled every `check_delay`: 1 s here, 5 s by default)",
    }))
    n = plan.ctl_programs
    control = [
        Row(f"status_cli_{n}", f"{n} programs: status through the CLI (whole process)", "ms",
            "≥ 5× faster than supervisorctl", ratio_at_most(0.2)),
        Row(f"status_api_{n}", f"{n} programs: status through the API, a new connection/client "
            "per call (raw socket / XML-RPC / ZeroMQ)", "ms", "≥ 10× faster than XML-RPC, ≤ circus",
            raw_status_check),
        Row(f"status_api_reused_{n}", f"{n} programs: status through the API, one connection/"
            "client reused", "ms", "≥ 10× faster than XML-RPC, ≤ circus", raw_status_check),
        Row(f"status_api_brief_{n}", f"{n} programs: brief status (names and states), one "
            "connection reused; supervisord/circus: their full status, as above", "ms",
            "≥ 10× faster than XML-RPC, ≤ circus", raw_status_check),
        Row(f"idle_cpu_{n}", f"{n} programs: supervising process's idle CPU, % of one core "
            "(/proc/PID/stat utime+stime)", "%", "below supervisord and circusd", below_both),
        Row(f"idle_cpu_ns_{n}", f"{n} programs: the same from /proc/PID/schedstat (ns resolution)",
            "%", "below supervisord and circusd", below_both),
        Row(f"daemon_pss_{n}", f"{n} programs: supervising process's own PSS", "MiB"),
    ]
    other = [Row(f"shutdown_k{k}", f"K={k}: shutdown of the whole tree (SIGTERM → all gone)", "s")
             for k in plan.shutdown_ks]
    other += [Row(f"boot_k{k}", f"K={k}: fresh boot, launch → all K ready lines", "s")
              for k in plan.ks]
    m = plan.scale_programs
    other += [
        Row(f"scale_running_{m}", f"{m} companions: launch → all RUNNING (startsecs 1 s)", "s",
            "≤ 5 s", at_most_seconds(5.0)),
        Row(f"scale_forked_{m}", f"{m} companions: launch → all forked", "s"),
        Row(f"scale_manager_pss_{m}", f"{m} companions: manager's own PSS", "MiB"),
        Row(f"scale_manager_rss_{m}", f"{m} companions: manager's own RSS", "MiB"),
        Row(f"shutdown_{m}", f"{m} companions: shutdown of the whole tree", "s"),
    ]
    return [
        ("Memory the K background processes add (PSS, MiB)", memory),
        ("Start and restart latency (ms)", latency),
        (f"Control and idle cost with {n} programs", control),
        ("Shutdown, boot and scale", other),
        ("Output: programs printing as fast as they can, rotation at "
         f"{plan.output_maxbytes // 2**20} MB with {plan.output_backups} backups",
         output_rows(plan)),
        ("Reloads", reload_rows(plan)),
    ]


Verdict = tuple[str, bool | None, str]


def render(results: Results, plan: Plan, elapsed: float) -> tuple[str, list[Verdict]]:
    facts = results.facts
    out = [
        f"# gunicorn-companion benchmarks ({facts.get('mode')} run)",
        "",
        f"{facts.get('date') or time.strftime('%Y-%m-%d %H:%M:%S')}, Python {facts.get('python')}, "
        f"{facts.get('cpus')} CPUs, {elapsed / 60:.1f} min, load average "
        f"{_load(facts.get('loadavg_start'))} at the start and {_load(facts.get('loadavg_end'))} "
        "at the end (anything else running on the machine shows in the spread). "
        "Cells: median (min–max) over the samples; ratios: median (min–max) of the "
        "per-repetition ratios against supervisord measured in the same run (lower is better "
        "for every figure here).",
        "",
    ]
    verdicts: list[Verdict] = []
    header = ("| Figure | companions | supervisord | circus | companions ÷ supervisord | "
              "circus ÷ supervisord | Target | Met |")
    for section, rows in rows_for(plan):
        out += [f"## {section}", "", header, "|" + "---|" * 8]
        for row in rows:
            met_text = ""
            if row.check is not None:
                met, detail = row.check(results, row)
                met_text = "n/a" if met is None else ("met" if met else "**not met**")
                verdicts.append((f"{row.title} — {row.target}", met, detail))
            if row.texts:
                out.append(f"| {row.title} | " + " | ".join(row.texts.get(s, "") for s in SYSTEMS)
                           + " | | | | |")
                continue
            if row.columns:
                ratio = (COMPANIONS, SUPERVISORD)  # the columns' systems, as the header says
                out.append(
                    f"| {row.title} | "
                    + " | ".join(cell(results, row.figure, row.columns[s], row.unit)
                                 if s in row.columns else "" for s in SYSTEMS)
                    + f" | {ratio_cell(results, row.figure, *map(row.columns.get, ratio))}"
                    + f" | | {row.target} | {met_text} |")
                continue
            out.append(
                f"| {row.title} | "
                + " | ".join(cell(results, row.figure, s, row.unit) for s in SYSTEMS)
                + f" | {ratio_cell(results, row.figure, COMPANIONS)}"
                + f" | {ratio_cell(results, row.figure, CIRCUS)}"
                + f" | {row.target} | {met_text} |")
        out.append("")
    out += gc_freeze_section(results, plan)
    out += ["## Targets", ""]
    for title, met, detail in verdicts:
        mark = "n/a" if met is None else ("met" if met else "NOT MET")
        out.append(f"- {mark}: {title}" + (f" ({detail})" if detail else ""))
    out += ["", "## How these were measured", ""] + [f"- {line}" for line in method_notes(plan)]
    if results.notes:
        out += [""] + [f"- {line}" for line in results.notes]
    if results.failures:
        out += ["", "## Failures", ""] + [f"- {line}" for line in results.failures]
    return "\n".join(out) + "\n", verdicts


def gc_freeze_section(results: Results, plan: Plan) -> list[str]:
    out = ["## `companion_gc_freeze` on and off (PSS the companions add, MiB)", ""]
    if not results.facts.get("gc_freeze_available"):
        return out + ["n/a: this build has no `companion_gc_freeze` setting "
                      "(not in `gunicorn-companion serve --help`).", ""]
    default = results.facts.get("gc_freeze_default")
    out += [f"Default: {'unknown' if default is None else ('on' if default else 'off')}.", "",
            "| Figure | gc_freeze=on | gc_freeze=off | on ÷ supervisord | off ÷ supervisord |",
            "|---|---|---|---|---|"]
    on, off = f"{COMPANIONS} gc_freeze=on", f"{COMPANIONS} gc_freeze=off"
    for k in plan.ks:
        for figure, what in ((f"mem_start_k{k}", "right after start"),
                             (f"mem_hold_k{k}", f"after {plan.hold:g} s with GC active")):
            out.append(f"| K={k}: {what} | {cell(results, figure, on, 'MiB')} | "
                       f"{cell(results, figure, off, 'MiB')} | {ratio_cell(results, figure, on)} | "
                       f"{ratio_cell(results, figure, off)} |")
    return out + [""]


def method_notes(plan: Plan) -> list[str]:
    return [
        "Workload: `benchmarks/workload`, a Django + DRF project that also imports SQLAlchemy's "
        "ORM, pydantic and requests and builds module-level caches (about 115 MiB resident once "
        "imported). K background processes are half queue workers (`workload.worker`), half "
        "schedulers (`workload.scheduler`).",
        "companions: `gunicorn-companion serve` with `preload_app = True`, one sync HTTP worker, "
        "the K targets as companions, `companion_restart_delay = 0`, `startsecs` 1 s (default). "
        "supervisord and circus: the same K targets as standalone programs "
        "(`python -m workload.worker`: a cold start that imports the whole app), beside the same "
        "web server without companions.",
        "Memory: sum of `Pss` from /proc/PID/smaps_rollup. companions: the whole gunicorn tree "
        "minus the same server without companions (measured alone just before). supervisord / "
        "circus: the web server's tree plus the daemon's tree, minus the web server alone, so "
        "the daemon counts like the companion manager does. Readings right after every process "
        f"wrote its ready line (+{plan.settle:g} s), and {plan.hold:g} s later. Each background "
        f"process wakes every 50 ms, allocates a little cyclic garbage and runs a full "
        f"`gc.collect()` every {plan.full_gc_every:g} s.",
        "Start: `stop NAME` then `start NAME`; from just before the request to the time stamp in "
        "the new process's ready line. CLI = `gunicorn-companion start` / `supervisorctl start` / "
        "`circusctl start` (including the CLI's own start-up); API = the raw control socket / "
        "XML-RPC `startProcess` / ZeroMQ `start`.",
        "Restart: SIGKILL of one program in RUNNING state to its successor's ready line. "
        "Configured delay: companions `restart_delay = 0`; supervisord has no delay setting for "
        "a process that dies after RUNNING (it notices on its 1 s poll loop); circus has none "
        "either but reaps and respawns from a periodic check every `check_delay`, set to 1 s here "
        "(its default is 5 s). "
        "'forked' is the new process's creation time from /proc (10 ms resolution): "
        "kill → forked is detection + spawn, forked → ready is the program's own start-up.",
        f"Control: {plan.ctl_programs} tiny idle programs under each (companions: a trivial "
        "target of a trivial app; supervisord/circus: `python -c 'import time; "
        "time.sleep(1e9)'`), all three running side by side. CLI = the wall time of a whole "
        "`gunicorn-companion -s SOCK status` / `supervisorctl status` / `circusctl status`; "
        "API = one in-process call, either on a new connection/client per call (a new UNIX "
        "connection to the raw socket; a new XML-RPC `ServerProxy`; a new `CircusClient`, "
        "closed after the call) or on one kept for all calls.",
        f"Idle CPU: utime+stime of the companion manager / supervisord / circusd from "
        f"/proc/PID/stat over {plan.idle_window:g} s with no requests.",
        "Shutdown: SIGTERM to the gunicorn master / supervisord / circusd until every process "
        "of its tree has exited; the targets exit at once on SIGTERM. The companions figure "
        "includes the HTTP server's own shutdown.",
        f"Scale: `gunicorn-companion serve` with {plan.scale_programs} trivial companions; the "
        "raw status is polled every 20 ms from the launch until all are RUNNING.",
        f"Output: `workload.chatty` waits for a start file, then prints numbered 100-byte lines "
        f"(1,000 per write) for {plan.output_seconds:g} s; each program's output goes to its own "
        f"file rotated at {plan.output_maxbytes // 2**20} MB with {plan.output_backups} backups "
        "(companions: `stdout_maxbytes`/`stdout_backups`; supervisord: `stdout_logfile_maxbytes`"
        "/`stdout_logfile_backups`; circus: `FileStream` `max_bytes`/`backup_count`, and "
        "`time_format` for time stamps, which supervisord cannot add). Throughput: the bytes "
        "printed (100 per line) over the time from the first line printed to the last one "
        "found in its file. CPU: the supervising process's /proc/PID/schedstat time over that "
        "span, per 100 MB. Lost: numbers missing between the oldest line kept (rotation deletes "
        "older ones) and the last printed (a torn line's number counts as missing too: it "
        "cannot be read back whole); torn: pieces in the files that are not exactly one "
        "printed line (cut, joined, stamped in the middle, or a file ending mid-line). "
        "No supervisor: the same programs with stdout to /dev/null, and piped to `cat > file` "
        "(`cat`'s CPU from /proc/PID/schedstat, per 100 MB).",
        f"HUP reload: SIGHUP to the master until each of the {plan.reload_workers} new HTTP "
        "workers ran Gunicorn's `post_worker_init` hook (it appends its pid and "
        "`time.monotonic()` to a file), with the trivial app preloaded; companions: "
        f"`gunicorn-companion serve` with {plan.reload_companions} idle companions that the "
        "reload leaves unchanged; plain Gunicorn: the `gunicorn` command, same config without "
        "companions. Each SIGHUP 0.4 s after the previous reload's old workers exited (Gunicorn "
        "finishes a reload only then, polling every 0.1 s; a SIGHUP sent earlier waits). The "
        "paired ratio pairs the i-th HUP of each.",
        "Reread: one companion's `env` changed in the config file, then the raw `reread` "
        "request, until the brief `status` shows that companion RUNNING with a new pid "
        "(startsecs 0, polled every 2 ms); the manager's CPU (schedstat) from the request to "
        "its answer: reading the config file (compiling it: the bench writes every companion "
        "out, so this part grows with their number), validating the entries that changed "
        "(the others keep their specs), the diff.",
    ]


def plot(results: Results, plan: Plan, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    styles = {SUPERVISORD: ("s", "-"), CIRCUS: ("^", "--")}
    if results.facts.get("gc_freeze_available"):
        default_on = results.facts.get("gc_freeze_default") is not False
        curves = [(SUPERVISORD, SUPERVISORD), (CIRCUS, CIRCUS),
                  (f"{COMPANIONS} gc_freeze=on",
                   "companions, gc_freeze on" + (" (default)" if default_on else "")),
                  (f"{COMPANIONS} gc_freeze=off",
                   "companions, gc_freeze off" + ("" if default_on else " (default)"))]
        styles[curves[2][0]] = ("o", "-")
        styles[curves[3][0]] = ("D", ":")
    else:
        curves = [(SUPERVISORD, SUPERVISORD), (CIRCUS, CIRCUS), (COMPANIONS, COMPANIONS)]
        styles[COMPANIONS] = ("o", "-")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, (prefix, title) in zip(axes, (("mem_start", "right after start"),  # noqa: B905
                                          ("mem_hold", f"after {plan.hold:g} s, GC active"))):
        for key, label in curves:
            xs, ys, lo, hi = [], [], [], []
            for k in plan.ks:
                series = results.get(f"{prefix}_k{k}", key)
                if series and series.values:
                    xs.append(k)
                    ys.append(max(series.median, 0.1))
                    lo.append(max(series.median, 0.1) - max(series.low, 0.1))
                    hi.append(max(series.high, 0.1) - max(series.median, 0.1))
            if xs:
                marker, line = styles[key]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, linestyle=line, capsize=4,
                            label=label)
        ax.set_title(f"PSS added by K processes, {title}")
        ax.set_xlabel("K (background processes)")
        ax.set_xticks(list(plan.ks))
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("MiB (log scale)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
