"""``gunicorn-companion top``: a live table of the companions in the terminal.

Every second it asks the manager for a status over one connection it keeps
(client.Session), with the CPU time and memory figures the manager reads from
/proc only when asked (``"fields"``: cpu_seconds, rss, pss, uss), and draws
the table; CPU % is the CPU time a companion's process used between two
refreshes over the time between them, so the first refresh shows none.

The table is made by pure functions (``table_rows``, ``sort_rows``,
``render``); ``run`` is the shell around them. curses (the standard library)
draws it: it restores the terminal however the program ends (``q``, Ctrl-C,
an error), redraws on a resize, and waits for a key and the next refresh in
one call, where plain ANSI escapes would need all three by hand.
"""

from __future__ import annotations

import sys
import time

from . import client
from .ctl import (
    EXIT_OK,
    EXIT_USAGE,
    _complain,
    _cut_end,
    format_exit,
    shorten_middle,
)
from .units import format_bytes, format_duration

REFRESH_SECONDS = 1.0
STATUS_FIELDS = ["name", "state", "pid", "uptime", "restarts", "last_exit",
                 "cpu_seconds", "rss", "pss", "uss"]

# A key, the column it sorts by, and whether the biggest comes first (top's
# habit for figures); the same key again reverses the order.
SORT_KEYS = {
    "n": ("name", False),
    "s": ("state", False),
    "p": ("pid", False),
    "u": ("uptime", True),
    "r": ("restarts", True),
    "c": ("cpu", True),
    "m": ("rss", True),
}
COLUMNS = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "PSS", "USS",
           "LAST EXIT")
# Problems first when sorted by state.
_STATE_ORDER = {state: i for i, state in enumerate(
    ("FATAL", "BACKOFF", "STOPPING", "STARTING", "RUNNING", "STOPPED"))}
_MIN_NAME = 8
_KEPT_COLUMNS = COLUMNS.index("RSS") + 1  # before long names are shortened
FOOTER = ("sort: n name  s state  p pid  u uptime  r restarts  c cpu  m memory "
          "(again: reverse)  q quit")


def table_rows(companions: list[dict], previous: dict[str, tuple], now: float
               ) -> tuple[list[dict], dict[str, tuple]]:
    """One row per companion with its CPU %, and the sample to compare the
    next refresh with: name -> (pid, cpu_seconds, when read) (pure).

    When read is the manager's ``sampled_at`` where it gives one (it reads
    /proc within a time budget, so a figure may be older than this refresh),
    else ``now``: either way the rate divides by the time between readings."""
    rows, sample = [], {}
    for companion in companions:
        name, pid = companion.get("name"), companion.get("pid")
        cpu_seconds = companion.get("cpu_seconds")
        cpu = None
        if isinstance(cpu_seconds, (int, float)) and pid is not None:
            read_at = companion.get("sampled_at")
            if not isinstance(read_at, (int, float)):
                read_at = now
            sample[name] = (pid, cpu_seconds, read_at)
            before = previous.get(name)
            if before is not None and before[0] == pid and read_at > before[2]:
                cpu = max(0.0, 100.0 * (cpu_seconds - before[1]) / (read_at - before[2]))
        rows.append({**companion, "cpu": cpu})
    return rows, sample


def sort_rows(rows: list[dict], key: str, reverse: bool) -> list[dict]:
    """Rows in order of ``key`` (a SORT_KEYS column); rows without a value
    (a stopped companion's CPU) come last either way; ties keep their order (pure)."""
    def value(row):
        if key == "state":
            return _STATE_ORDER.get(row.get("state"), len(_STATE_ORDER))
        return row.get(key)

    known = [row for row in rows if value(row) is not None]
    unknown = [row for row in rows if value(row) is None]
    return sorted(known, key=value, reverse=reverse) + unknown


def _cells(row: dict) -> tuple[str, ...]:
    pid, restarts, cpu = row.get("pid"), row.get("restarts"), row.get("cpu")
    return (str(row.get("name", "?")), str(row.get("state", "?")),
            "-" if pid is None else str(pid), format_duration(row.get("uptime")),
            "-" if restarts is None else str(restarts),
            "-" if cpu is None else f"{cpu:.1f}",
            format_bytes(row.get("rss")), format_bytes(row.get("pss")),
            format_bytes(row.get("uss")), format_exit(row.get("last_exit")))


def render(rows: list[dict], width: int, height: int, title: str) -> list[str]:
    """The screen as lines no longer than ``width``, at most ``height`` of
    them: a title, the column heads, the rows that fit and the keys (pure).
    A narrow terminal loses columns from the right, then the lines are cut:
    never wrapped."""
    width, height = max(width, 1), max(height, 1)
    table = [COLUMNS] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    columns = len(COLUMNS)

    def total(count: int) -> int:
        return sum(widths[:count]) + 2 * (count - 1)

    # the memory breakdown and the last exit go first, then long names
    # are shortened, then more columns go
    while columns > _KEPT_COLUMNS and total(columns) > width:
        columns -= 1
    if total(columns) > width and widths[0] > _MIN_NAME:
        widths[0] = max(_MIN_NAME, widths[0] - (total(columns) - width))
    while columns > 2 and total(columns) > width:
        columns -= 1
    lines = [title]
    room = height - 3  # title, column heads, keys
    shown = table[:1 + max(room, 0)]
    for line in shown:
        cells = [shorten_middle(line[0], widths[0])] + list(line[1:columns])
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(cells, widths[:columns],
                                                                strict=True)).rstrip())
    hidden = len(table) - len(shown)
    lines.append(FOOTER if not hidden else f"({hidden} more below)  {FOOTER}")
    return [_clip(line, width) for line in lines[:height]]


def _clip(line: str, width: int) -> str:
    if len(line) <= width:
        return line
    return _cut_end(line, width) if width > 3 else line[:width]


def title_line(rows: list[dict], key: str, reverse: bool, clock: str) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.get("state"))] = counts.get(str(row.get("state")), 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in counts.items())
    usual = next(first for column, first in SORT_KEYS.values() if column == key)
    order = " (reversed)" if reverse != usual else ""
    return (f"gunicorn-companion top  {clock}  sorted by {key}{order}  "
            f"{len(rows)} companions: {states}")


def choose_sort(letter: str, key: str, reverse: bool) -> tuple[str, bool]:
    """After a key press: the same column again reverses; another one sorts
    in its usual order (pure)."""
    column, biggest_first = SORT_KEYS[letter]
    if column == key:
        return key, not reverse
    return column, biggest_first


def run(path: str) -> int:
    """The live table until ``q`` or Ctrl-C; 2 when the manager cannot be asked."""
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        _complain("top needs a terminal; scripts read `gunicorn-companion status --json`")
        return EXIT_USAGE
    try:
        session = client.Session(path)
    except client.ClientError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    import curses

    failure: list[str] = []
    try:
        curses.wrapper(_screen, session, failure)
    except KeyboardInterrupt:
        pass  # Ctrl-C: as good as q (curses.wrapper has restored the terminal)
    finally:
        session.close()
    if failure:
        _complain(failure[0])
        return EXIT_USAGE
    return EXIT_OK


def _screen(screen, session: client.Session, failure: list[str]) -> None:
    import curses

    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal that cannot hide the cursor
    key, reverse = "name", False
    previous: dict[str, tuple] = {}
    rows: list[dict] = []
    next_refresh = 0.0
    while True:
        now = time.monotonic()
        if now >= next_refresh:
            try:
                reply = session.request({"cmd": "status", "fields": STATUS_FIELDS})
            except client.ClientError as exc:
                failure.append(str(exc))
                return
            if reply.get("ok") is not True:
                failure.append(str(reply.get("error") or "the manager refused the status"))
                return
            rows, previous = table_rows(reply.get("companions") or [], previous, now)
            next_refresh = now + REFRESH_SECONDS
        height, width = screen.getmaxyx()
        clock = time.strftime("%H:%M:%S")
        lines = render(sort_rows(rows, key, reverse), width, height,
                       title_line(rows, key, reverse, clock))
        screen.erase()
        for y, line in enumerate(lines):
            try:
                screen.addnstr(y, 0, line, width)
            except curses.error:
                pass  # the bottom-right cell: curses cannot move past it, the text is there
        screen.refresh()
        screen.timeout(max(1, int((next_refresh - time.monotonic()) * 1000)))
        pressed = screen.getch()
        if pressed in (ord("q"), ord("Q")):
            return
        if 0 <= pressed < 256 and chr(pressed) in SORT_KEYS:
            key, reverse = choose_sort(chr(pressed), key, reverse)
