"""What the metrics endpoint shows (pure): the Prometheus text exposition,
the status page and its JSON, all from plain values.

The input is the supervisor's snapshot (``Supervisor.snapshot()``: one dict
per companion), the figures read from /proc for each running companion
(``Figures``) and the manager's own (``ManagerFacts``). Reading /proc and
the sockets live elsewhere (webserver.py), so every byte written here is a
function of its arguments and tested as such.
"""

from __future__ import annotations

import html
import json
import signal
from collections.abc import Iterable
from dataclasses import dataclass

from .states import State
from .units import format_bytes, format_duration

PREFIX = "gunicorn_companion_"
MEMORY_KINDS = ("rss", "pss", "uss")


@dataclass(frozen=True)
class Figures:
    """One process as /proc shows it: memory in bytes (smaps_rollup) and CPU
    seconds (its own and its waited-for children's, from stat)."""

    rss: int
    pss: int
    uss: int
    cpu_seconds: float

    def memory(self, kind: str) -> int:
        return getattr(self, kind)


@dataclass(frozen=True)
class ManagerFacts:
    pid: int
    restarts: int  # how many times the master replaced a dead manager
    uptime: float
    figures: Figures | None


# -- Prometheus text exposition (format 0.0.4) -----------------------------------------


def escape_label(value: object) -> str:
    """A label value as the text format wants it: backslash, quote and
    newline escaped, everything else as is (UTF-8)."""
    return (str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Families:
    """Samples grouped by metric name, each family with one HELP and TYPE."""

    def __init__(self):
        self.order: list[str] = []
        self.meta: dict[str, tuple[str, str]] = {}
        self.samples: dict[str, list[str]] = {}

    def declare(self, name: str, kind: str, help_text: str) -> None:
        self.order.append(name)
        self.meta[name] = (kind, help_text)
        self.samples[name] = []

    def add(self, name: str, labels: Iterable[tuple[str, object]], value: float) -> None:
        text = ",".join(f'{key}="{escape_label(v)}"' for key, v in labels)
        self.samples[name].append(f"{PREFIX}{name}{{{text}}} {_number(value)}" if text
                                  else f"{PREFIX}{name} {_number(value)}")

    def render(self) -> str:
        out = []
        for name in self.order:
            kind, help_text = self.meta[name]
            out.append(f"# HELP {PREFIX}{name} {help_text}")
            out.append(f"# TYPE {PREFIX}{name} {kind}")
            out.extend(self.samples[name])
        return "\n".join(out) + "\n"


# (name, type, help): the order of the exposition, and the list in docs/observability.md
METRICS = (
    ("up", "gauge", "1 when the companion is RUNNING, else 0."),
    ("state", "gauge", "1 for the companion's current state, 0 for the others."),
    ("restarts_total", "counter", "Automatic restarts after the companion exited on its own."),
    ("uptime_seconds", "gauge", "Seconds since the companion's process started (0 when none)."),
    ("memory_bytes", "gauge", "Memory of the companion's main process (smaps_rollup): rss, pss, "
                              "uss."),
    ("cpu_seconds_total", "counter", "CPU seconds of the companion's main process and the "
                                     "children it waited for (restarts from 0 with it)."),
    ("output_dropped_lines_total", "counter", "Output lines dropped since the manager booted."),
    ("last_exit_code", "gauge", "Exit code of the companion's last exit (absent after a signal)."),
    ("last_exit_signal", "gauge", "Signal number that ended the companion last (absent after an "
                                  "exit code)."),
    ("lease_held", "gauge", "Fleet singletons: 1 while this manager holds the lease, else 0."),
    ("lease_token", "gauge", "Fleet singletons: the fencing token of the lease last held."),
    ("manager_restarts_total", "counter", "Times the Gunicorn master replaced a dead companion "
                                          "manager."),
    ("manager_uptime_seconds", "gauge", "Seconds since this companion manager started."),
    ("manager_memory_bytes", "gauge", "Memory of the companion manager process: rss, pss, uss."),
)


def _signal_number(name: str) -> int | None:
    try:
        return int(signal.Signals[name])
    except KeyError:
        return int(name[len("signal "):]) if name.startswith("signal ") else None


def exposition(entries: list[dict], figures: dict[str, Figures],
               manager: ManagerFacts) -> str:
    """The whole /metrics body."""
    families = _Families()
    for name, kind, help_text in METRICS:
        families.declare(name, kind, help_text)
    for entry in entries:
        who = (("companion", entry["name"]),)
        state = entry["state"]
        families.add("up", who, state == State.RUNNING.value)
        for each in State:
            families.add("state", who + (("state", each.value),), state == each.value)
        families.add("restarts_total", who, entry["restarts"])
        families.add("uptime_seconds", who, entry["uptime"] or 0.0)
        seen = figures.get(entry["name"])
        if seen is not None:
            for kind in MEMORY_KINDS:
                families.add("memory_bytes", who + (("kind", kind),), seen.memory(kind))
            families.add("cpu_seconds_total", who, seen.cpu_seconds)
        families.add("output_dropped_lines_total", who, entry.get("output_dropped", 0))
        last_exit = entry.get("last_exit") or {}
        if last_exit.get("code") is not None:
            families.add("last_exit_code", who, last_exit["code"])
        elif last_exit.get("signal") is not None:
            number = _signal_number(last_exit["signal"])
            if number is not None:
                families.add("last_exit_signal", who + (("signal", last_exit["signal"]),), number)
        lease = entry.get("lease")
        if isinstance(lease, dict):
            families.add("lease_held", who, lease.get("state") == "held")
            if lease.get("token") is not None:
                families.add("lease_token", who, lease["token"])
    families.add("manager_restarts_total", (), manager.restarts)
    families.add("manager_uptime_seconds", (), manager.uptime)
    if manager.figures is not None:
        for kind in MEMORY_KINDS:
            families.add("manager_memory_bytes", (("kind", kind),), manager.figures.memory(kind))
    return families.render()


# -- the status page -------------------------------------------------------------------

COLUMNS = ("Companion", "State", "PID", "Uptime", "Restarts", "Memory (RSS / PSS / USS)",
           "Last exit", "Output")
REFRESH_SECONDS = 3


def _last_exit_text(last_exit: dict | None) -> str:
    if not last_exit:
        return "-"
    if last_exit.get("signal") is not None:
        return f"signal {last_exit['signal']}"
    return f"exit code {last_exit.get('code')}"


def _output_text(entry: dict) -> str:
    paths = [p for p in (entry.get("stdout"), entry.get("stderr")) if p]
    return " | ".join(dict.fromkeys(str(p) for p in paths)) or "-"


def status_rows(entries: list[dict], figures: dict[str, Figures]) -> list[dict]:
    """One row per companion, every cell already text: the page and its
    script show exactly these strings, formatted in one place."""
    rows = []
    for entry in entries:
        seen = figures.get(entry["name"])
        memory = ("-" if seen is None else
                  " / ".join(format_bytes(seen.memory(kind)) for kind in MEMORY_KINDS))
        cells = [entry["name"], entry["state"],
                 "-" if entry["pid"] is None else str(entry["pid"]),
                 format_duration(entry["uptime"]), str(entry["restarts"]), memory,
                 _last_exit_text(entry.get("last_exit")), _output_text(entry)]
        rows.append({"name": entry["name"], "state": entry["state"], "cells": cells})
    return rows


def _manager_line(manager: ManagerFacts) -> str:
    memory = ("" if manager.figures is None else
              f", RSS {format_bytes(manager.figures.rss)}")
    return (f"Manager pid {manager.pid}, up {format_duration(manager.uptime)}, "
            f"replaced {manager.restarts} times{memory}")


def status_json(entries: list[dict], figures: dict[str, Figures], manager: ManagerFacts,
                title: str) -> bytes:
    """What the page's script polls: the same rows, as JSON."""
    return json.dumps({"title": title, "manager": _manager_line(manager),
                       "rows": status_rows(entries, figures)}).encode()


_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#fafafa;color:#222}
h1{font-size:18px;margin:0 0 4px} p{margin:0 0 12px;color:#555}
.wrap{overflow-x:auto} table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 8px;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}
th{background:#eee;font-weight:600}
.state{font-weight:600;border-radius:3px;padding:1px 6px}
.RUNNING{background:#d4f4dd;color:#135d25}.STARTING,.STOPPING{background:#fff3c4;color:#6b5200}
.BACKOFF,.FATAL{background:#fbd5d5;color:#8a1010}.STOPPED{background:#e5e5e5;color:#444}
#stale{color:#8a1010}
"""

# Rebuilds the table from /status.json: textContent only, so a value is
# never markup. Without script (or when the manager is away) the page is
# still the server-rendered table, marked stale.
_SCRIPT = """
(function(){
  var refreshes=0;
  function cell(tr, text, cls){var td=document.createElement('td');
    if(cls){var s=document.createElement('span');s.className='state '+cls;s.textContent=text;
      td.appendChild(s);}else{td.textContent=text;} tr.appendChild(td);}
  function refresh(){
    fetch('status.json',{cache:'no-store'}).then(function(r){return r.json();}).then(function(d){
      var body=document.getElementById('rows');
      while(body.firstChild){body.removeChild(body.firstChild);}
      d.rows.forEach(function(row){var tr=document.createElement('tr');
        tr.setAttribute('data-companion',row.name);
        row.cells.forEach(function(text,i){cell(tr,text,i===1?row.state:null);});
        body.appendChild(tr);});
      document.getElementById('manager').textContent=d.manager;
      document.getElementById('stale').textContent='';
      body.setAttribute('data-refreshes',String(++refreshes));
    }).catch(function(){document.getElementById('stale').textContent=' (not updating)';});
  }
  setInterval(refresh, REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))


def status_page(entries: list[dict], figures: dict[str, Figures], manager: ManagerFacts,
                title: str) -> bytes:
    """The one-page status view: self-contained (inline CSS and script, no
    external asset), readable on a phone, every value escaped."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = []
    for row in status_rows(entries, figures):
        cells = [f'<td><span class="state {esc(row["state"])}">{esc(text)}</span></td>'
                 if i == 1 else f"<td>{esc(text)}</td>"
                 for i, text in enumerate(row["cells"])]
        body.append(f'<tr data-companion="{esc(row["name"])}">{"".join(cells)}</tr>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_STYLE}</style></head>
<body><h1>{esc(title)}</h1>
<p><span id="manager">{esc(_manager_line(manager))}</span><span id="stale"></span></p>
<div class="wrap"><table><thead><tr>{head}</tr></thead>
<tbody id="rows">{"".join(body)}</tbody></table></div>
<script>{_SCRIPT}</script></body></html>
"""
    return page.encode()
