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


def children_of(parent: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``parent``."""
    found = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if _live(fields) and int(fields[1]) == parent:
            found.append(pid)
    return found


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    found = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if _live(fields) and int(fields[3]) == sid:
            found.append(pid)
    return found


def process_groups(pgids) -> dict[int, list[int]]:
    """Live members of each of the given process groups, from one scan of /proc."""
    wanted = set(pgids)
    groups: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _stat_fields(pid)
        if _live(fields) and int(fields[2]) in wanted:
            groups.setdefault(int(fields[2]), []).append(pid)
    return groups


def private_bytes(pid: int) -> int:
    """Memory only this process maps (Private_Clean + Private_Dirty), in bytes."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return total
