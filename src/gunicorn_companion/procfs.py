"""The few facts the manager and master read from /proc (Linux).

Elsewhere these return nothing, and the features that need them (stray
cleanup, memory recycling) do nothing.
"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].decode().split()


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _live(fields: list[str] | None) -> bool:
    return fields is not None and fields[0] not in ("Z", "X")


def _live_where(field: int, value_in) -> list[tuple[int, int]]:
    """(pid, that field's value) of live processes whose stat field is in ``value_in``."""
    found = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if _live(fields) and int(fields[field]) in value_in:
            found.append((pid, int(fields[field])))
    return found


_PPID, _PGRP, _SESSION = 1, 2, 3


def children_of(parent: int) -> list[int]:
    """Processes whose parent is ``parent``, zombies included where the
    kernel lists them (signalling a zombie does nothing, and its parent's
    reaper collects it).

    Read from the kernel's own list of each of its threads' children, without
    opening any child's files: the scan of all of /proc this replaces read
    every process on the machine, so the stray sweep after each companion
    exit cost milliseconds that grew with the number of companions (and of
    anyone else's processes). The scan stays for kernels without that list."""
    listed = _listed_children(parent)
    if listed is None:  # a kernel without CONFIG_PROC_CHILDREN
        return [pid for pid, _ in _live_where(_PPID, {parent})]
    return listed


def _listed_children(parent: int) -> list[int] | None:
    """/proc/PID/task/TID/children of every thread; None where the kernel has none."""
    try:
        tasks = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return []  # gone: no children
    found: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{parent}/task/{task}/children", "rb") as f:
                found += map(int, f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{parent}/task/{task}"):
                continue  # a thread that just ended
            return None
        except OSError:
            continue
    return found


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    return [pid for pid, _ in _live_where(_SESSION, {sid})]


def process_groups(pgids) -> dict[int, list[int]]:
    """Live members of each of the given process groups, from one scan of /proc."""
    groups: dict[int, list[int]] = {}
    for pid, pgid in _live_where(_PGRP, set(pgids)):
        groups.setdefault(pgid, []).append(pid)
    return groups


def group_members(pgid: int, sid: int) -> list[int]:
    """Live members of process group ``pgid`` in session ``sid``. A group
    never spans sessions, so asking for ours rules out an unrelated group
    that reused the number once ours was empty."""
    found = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if _live(fields) and int(fields[_PGRP]) == pgid and int(fields[_SESSION]) == sid:
            found.append(pid)
    return found


_ROLLUP_FIELDS = {"Rss:": "rss", "Pss:": "pss", "Private_Clean:": "uss", "Private_Dirty:": "uss"}


def memory(pid: int) -> dict[str, int] | None:
    """A process's memory from /proc/PID/smaps_rollup, in bytes: ``rss``
    (resident), ``pss`` (shared pages split among their users) and ``uss``
    (Private_Clean + Private_Dirty: only this process maps it, what ending it
    frees). None when it cannot be read (gone, or not Linux)."""
    found = {"rss": 0, "pss": 0, "uss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                kind = _ROLLUP_FIELDS.get(line[:line.find(":") + 1])
                if kind is not None:
                    found[kind] += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return found


def private_bytes(pid: int) -> int:
    """Memory only this process maps (Private_Clean + Private_Dirty), in bytes."""
    figures = memory(pid)
    return figures["uss"] if figures else 0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_UTIME, _CSTIME = 11, 14  # utime, stime, cutime, cstime: fields 14-17 of stat


def cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and of its children it has waited for (user +
    system), in seconds; None when it cannot be read."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) <= _CSTIME:
        return None
    return sum(int(v) for v in fields[_UTIME:_CSTIME + 1]) / _CLOCK_TICKS


def supplementary_groups(pid: int) -> set[int]:
    """The ``Groups:`` of /proc/PID/status; empty when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(gid) for gid in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


_ARG_START, _ARG_END = 45, 46  # arg_start, arg_end: fields 48 and 49 of stat


def argument_area(pid: int) -> tuple[int, int] | None:
    """Where a process's command line lies in its memory: (arg_start,
    arg_end) from /proc/PID/stat; None when it cannot be read (Linux 3.5+)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) <= _ARG_END:
        return None
    return int(fields[_ARG_START]), int(fields[_ARG_END])
