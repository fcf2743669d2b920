"""procfs against real processes: what the stray sweep and the stop path read."""

from __future__ import annotations

import os
import signal

import pytest
from support import wait_until

from gunicorn_companion import procfs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")


def _fork_child(exit_at_once: bool) -> int:
    pid = os.fork()
    if pid == 0:
        if not exit_at_once:
            signal.pause()
        os._exit(0)
    return pid


def _state(pid: int) -> str | None:
    fields = procfs._stat_fields(pid)
    return fields[0] if fields else None


def test_children_of_lists_children_not_yet_reaped():
    live = [_fork_child(exit_at_once=False) for _ in range(3)]
    zombie = _fork_child(exit_at_once=True)
    reaped = _fork_child(exit_at_once=True)
    try:
        os.waitpid(reaped, 0)
        wait_until(lambda: _state(zombie) == "Z", message="the child to become a zombie")
        children = procfs.children_of(os.getpid())
        # a zombie may be listed (the kernel's list has it, the fallback
        # scan does not); a reaped child never is
        assert set(children) - {zombie} == set(live)
        assert reaped not in children
        # the live ones are what the scan of all of /proc found
        scanned = {pid for pid, _ in procfs._live_where(procfs._PPID, {os.getpid()})}
        assert scanned == set(live)
    finally:
        for pid in live:
            os.kill(pid, signal.SIGKILL)
        for pid in [*live, zombie]:
            os.waitpid(pid, 0)


def test_children_of_a_process_that_is_gone_is_empty():
    gone = _fork_child(exit_at_once=True)
    os.waitpid(gone, 0)
    assert procfs.children_of(gone) == []
