"""Reading processes from /proc, and ending the ones the benchmark started.

Linux only. Memory is PSS (proportional set size) from
/proc/PID/smaps_rollup: a page shared by N processes counts 1/N to each, so
the sum over a set of processes is the physical memory that set uses, and the
difference between two sums is what was added.
"""

from __future__ import annotations

import os
import signal
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (field 3 of the whole line is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].decode("ascii", "replace").split()


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent_map() -> dict[int, int]:
    """pid -> ppid for every live process, from one scan."""
    parents = {}
    for pid in all_pids():
        fields = _stat(pid)
        if fields is not None and fields[0] not in ("Z", "X"):
            parents[pid] = int(fields[1])
    return parents


def tree(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and all its live descendants."""
    parents = parent_map() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents:
            found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def children(pid: int) -> list[int]:
    return [p for p, pp in parent_map().items() if pp == pid]


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (not its children), in seconds."""
    fields = _stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_ns(pid: int) -> int | None:
    """Time on CPU from /proc/PID/schedstat, in nanoseconds (finer than clock ticks)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    values[parts[0].rstrip(":")] = int(parts[1])
    except (OSError, ValueError):
        pass
    return values


def pss_kib(pid: int) -> int:
    return _rollup(pid).get("Pss", 0)


def rss_kib(pid: int) -> int:
    return _rollup(pid).get("Rss", 0)


def pss_sum_kib(pids) -> int:
    return sum(pss_kib(pid) for pid in pids)


def environ_has(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def marked_pids(marker: bytes) -> list[int]:
    """Every live process whose environment holds ``marker`` (KEY=VALUE), except us."""
    me = os.getpid()
    return [pid for pid in all_pids() if pid != me and alive(pid) and environ_has(pid, marker)]


def signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids, timeout: float, interval: float = 0.005, reap=None) -> float | None:
    """Seconds until none of ``pids`` is alive, or None at the deadline.

    ``reap`` is called each round so the caller can reap its own children
    (an unreaped child is a zombie, which counts as gone here anyway).
    """
    start = time.monotonic()
    deadline = start + timeout
    pending = set(pids)
    while True:
        if reap is not None:
            reap()
        pending = {pid for pid in pending if alive(pid)}
        now = time.monotonic()
        if not pending:
            return now - start
        if now >= deadline:
            return None
        time.sleep(interval)


def kill_trees(roots, marker: bytes | None, grace: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process under ``roots`` and every process
    carrying ``marker``; their process groups too. Returns what had to be killed."""
    parents = parent_map()
    victims = set()
    for root in roots:
        victims.update(tree(root, parents))
    if marker is not None:
        victims.update(marked_pids(marker))
    victims.discard(os.getpid())
    if not victims:
        return []
    signal_all(victims, signal.SIGTERM)
    wait_gone(victims, grace)
    # A second look: anything forked meanwhile, and whatever ignored SIGTERM.
    again = set(victims)
    parents = parent_map()
    for root in roots:
        again.update(tree(root, parents))
    if marker is not None:
        again.update(marked_pids(marker))
    again.discard(os.getpid())
    left = [pid for pid in again if alive(pid)]
    if left:
        signal_all(left, signal.SIGKILL)
        wait_gone(left, 5.0)
    return sorted(victims)
