"""Figures the manager reads from /proc for its observers (the metrics
endpoint, statsd), with their cost bounded: only when asked for, at most
once per ``SAMPLE_MAX_AGE``, and for at most ``SAMPLE_BUDGET`` of the loop's
time each time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from . import metrics, procfs

SAMPLE_MAX_AGE = 1.0  # /proc is read at most this often, however often asked
SAMPLE_BUDGET = 0.05  # and for at most this long each time (seconds)


class ProcSampler:
    """Figures from /proc for running companions and the manager, read only
    when a page is asked for, at most once per ``SAMPLE_MAX_AGE``, and for at
    most ``SAMPLE_BUDGET`` seconds each time.

    smaps_rollup costs the kernel a walk of the process's page tables: 1.7 to
    1.9 ms for a small Python process on a loaded 2-core machine, so 500
    companions would hold the loop for a second. Within the budget the
    figures never read come first, then the oldest; the rest keep their last
    figures (of the same pid) until a later scrape reaches them."""

    def __init__(self, now: Callable[[], float], *,
                 read: Callable[[int], metrics.Figures | None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 budget: float | None = None):
        self.now = now
        self.read = read or read_figures
        self.clock = clock  # real time, for the budget
        self.budget = SAMPLE_BUDGET if budget is None else budget
        self.taken_at: float | None = None
        self.known: dict[tuple[str, int], metrics.Figures] = {}  # by (name, pid)
        self.read_at: dict[tuple[str, int], float] = {}
        self.manager: metrics.Figures | None = None

    def sample(self, entries: list[dict], max_age: float = SAMPLE_MAX_AGE,
               ) -> tuple[dict[str, metrics.Figures], metrics.Figures | None]:
        """Figures of the entries' live pids by name, and the manager's own.

        ``max_age`` 0 reads again at each call (``status`` for top, which
        asks once a second and computes CPU % from ``sampled_at``); the
        budget still bounds each read."""
        live = [(e["name"], e["pid"]) for e in entries if e["pid"]]
        now = self.now()
        if self.taken_at is None or now - self.taken_at >= max_age:
            self.taken_at = now
            self._refresh(live, now)
            self.manager = self.read(os.getpid())
        return {key[0]: self.known[key] for key in live if key in self.known}, self.manager

    def sampled_at(self, name: str, pid: int) -> float | None:
        """When (the manager's clock) the figures of that process were read."""
        return self.read_at.get((name, pid))

    def _refresh(self, live: list[tuple[str, int]], now: float) -> None:
        alive = set(live)
        # a restarted companion's old pid is forgotten
        self.known = {k: v for k, v in self.known.items() if k in alive}
        self.read_at = {k: v for k, v in self.read_at.items() if k in alive}
        deadline = self.clock() + self.budget
        for key in sorted(live, key=lambda k: self.read_at.get(k, float("-inf"))):
            if self.clock() > deadline:
                break
            figures = self.read(key[1])
            self.read_at[key] = now
            if figures is not None:
                self.known[key] = figures


def read_figures(pid: int) -> metrics.Figures | None:
    memory = procfs.memory(pid)
    cpu = procfs.cpu_seconds(pid)
    if memory is None or cpu is None:
        return None
    return metrics.Figures(memory["rss"], memory["pss"], memory["uss"], cpu)


def figures_of(usage: dict | None) -> metrics.Figures | None:
    """A host's ``usage(pid)`` reply as Figures (None once the process is gone)."""
    if usage is None:
        return None
    return metrics.Figures(usage["rss"], usage["pss"], usage["uss"], usage["cpu_seconds"])
