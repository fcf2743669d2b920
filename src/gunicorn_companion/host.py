"""The manager's host: everything the supervisor asks of the operating system.

The supervisor (supervisor.py) never forks, signals, waits or reads /proc
itself: it asks its host. ``OsHost`` is the real one, over spawn.py,
procfs.py and output.py; the deterministic simulation (tests/simulation.py)
has a second one with a virtual process table and a virtual clock. What the
``Host`` protocol lists is therefore all the supervisor may depend on, and
all a simulated host must model:

- spawn a companion; signal a process or a process group; reap exits;
- list a group's live members, the manager's own children (strays), and
  each watched group's members in one go; read a process's private memory;
- the clock and randomness;
- the output sinks (``output``: tail, dropped counts, reopen) and tail -f.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from . import procfs
from .output import Capture, OutputRouter
from .privileges import Identity
from .spawn import spawn_companion, spawn_keeper
from .spec import CompanionSpec


class Host(Protocol):
    """What the supervisor needs from below; see the module docstring."""

    output: object  # .tail(names, count), .dropped[name], .owner_of

    def now(self) -> float: ...
    def random(self) -> float: ...
    def spawn(self, spec: CompanionSpec, target: Callable | None, *, lock_path: str | None,
              identity: Identity | None, fencing_token: int | None = None) -> int: ...
    def signal_process(self, pid: int, sig: int) -> bool: ...
    def signal_group(self, pgid: int, sig: int) -> bool: ...
    def reap(self) -> Iterator[tuple[int, int]]: ...
    def exited(self, pid: int) -> None: ...
    def group_members(self, pgid: int) -> list[int]: ...
    def process_groups(self, pgids) -> dict[int, list[int]]: ...
    def children(self) -> list[tuple[int, int]]: ...
    def private_bytes(self, pid: int) -> int: ...
    def master_gone(self) -> bool: ...
    def follow(self, names: list[str], responder) -> None: ...
    def reopen_output(self) -> None: ...
    def kill_session(self) -> bool: ...
    def close(self) -> None: ...


class OsHost:
    """The real host: forks, signals, waitpid, /proc, pipes and log files."""

    def __init__(self, selector, log, *, title: Callable[[str], None] = lambda name: None,
                 master_pid: int | None = None, gc_freeze: bool = False):
        self.log = log
        self.title = title
        self.master_pid = master_pid
        self.gc_freeze = gc_freeze
        self.output = OutputRouter(selector, log)
        self.captures: dict[int, list[Capture]] = {}  # by pid: its output pipes
        # tail -f clients: [names, newest line sequence sent, responder]
        self.followers: list[list] = []
        # set by the loop: the companions' notify channel, the signals a
        # companion must start with at their defaults, and what a freshly
        # forked companion must close of the manager's
        self.notify_fd: int | None = None
        self.handled_signals: tuple[int, ...] = ()
        self.child_closers: list[Callable[[], None]] = []

    # -- clock and randomness --------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def random(self) -> float:
        return random.random()

    # -- processes -----------------------------------------------------------------

    def close_in_child(self) -> None:
        """What a freshly forked companion must not keep of the manager."""
        for close in self.child_closers:
            close()
        self.output.close_in_child()
        for captures in self.captures.values():
            for capture in captures:
                if not capture.closed:
                    os.close(capture.fd)

    def spawn(self, spec, target, *, lock_path, identity, fencing_token=None) -> int:
        """Fork one companion with its output captured; raise OSError if it
        (or a pipe for its output) cannot be made, leaving nothing open."""
        if self.gc_freeze:
            # objects created since the last fork join the permanent generation:
            # collections in the companion then leave their pages shared
            gc.freeze()
        pipes = []
        try:
            pipes = self.output.pipes_for(spec)
            # the child must not keep the read ends: close_in_child closes them
            self.captures[-1] = [Capture(spec.name, stream, read_fd, dest,
                                         self.output.ring(spec.name), None)
                                 for stream, read_fd, _, dest in pipes]
            pid = spawn_companion(
                spec, target,
                handled_signals=self.handled_signals,
                close_in_child=self.close_in_child,
                title=self.title,
                notify_fd=self.notify_fd,
                lock_path=lock_path,
                stdout_fd=pipes[0][2],
                stderr_fd=pipes[1][2] if len(pipes) > 1 else None,
                identity=identity,
                fencing_token=fencing_token,
            )
        except OSError:
            for capture in self.captures.pop(-1, []):
                capture.finish()
                self.output.release(capture.destination)
            for _, _, write_fd, _ in pipes:
                os.close(write_fd)
            raise
        captures = self.captures.pop(-1)
        for (_, _, write_fd, _), capture in zip(pipes, captures, strict=True):
            os.close(write_fd)  # only the companion writes: EOF when it is gone
            if spec.timestamps:
                capture.timestamp_format = spec.timestamp_format
            self.output.watch(capture, lambda key, mask, c=capture, p=pid: self._on_output(c, p))
        self.captures[pid] = captures
        return pid

    def signal_process(self, pid: int, sig: int) -> bool:
        """False if it is gone; PermissionError propagates (the caller says so)."""
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, pgid: int, sig: int) -> bool:
        """False if no process (a zombie counts) is left in the group."""
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def reap(self) -> Iterator[tuple[int, int]]:
        """(pid, wait status) of each exited child, one at a time: the caller
        handles each exit before the next waitpid."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            yield pid, status

    def exited(self, pid: int) -> None:
        """A companion was reaped: its last words reach the file before its
        exit is handled (and before a restart could interleave a new
        process's lines); a held back destination keeps them in its buffer,
        ahead of the restart's."""
        for capture in list(self.captures.get(pid, [])):
            if not capture.drain():
                self._close_capture(capture, pid)
        self._feed_followers()

    def group_members(self, pgid: int) -> list[int]:
        # in our session: a group never spans sessions, so an unrelated group
        # that reused the number once ours emptied is not counted
        return procfs.group_members(pgid, os.getsid(0))

    def process_groups(self, pgids) -> dict[int, list[int]]:
        return procfs.process_groups(pgids)

    def children(self) -> list[tuple[int, int]]:
        """(pid, pgid) of the manager's live children."""
        found = []
        for pid in procfs.children_of(os.getpid()):
            try:
                found.append((pid, os.getpgid(pid)))
            except ProcessLookupError:
                pass
        return found

    def private_bytes(self, pid: int) -> int:
        return procfs.private_bytes(pid)

    def master_gone(self) -> bool:
        return bool(self.master_pid) and os.getppid() != self.master_pid

    def spawn_keeper(self, run: Callable[[], int], *, close_in_child: Callable[[], None]) -> int:
        """Fork the lease keeper (fleet.py): it keeps none of the manager's fds
        but its own end of the socketpair (``close_in_child`` closes ours)."""

        def close_all() -> None:
            self.close_in_child()
            close_in_child()

        return spawn_keeper(run, handled_signals=self.handled_signals, close_in_child=close_all,
                            title=self.title)

    def kill_session(self) -> bool:
        """SIGKILL every other process of the manager's session; False if the
        manager leads none (embedded in a test, say)."""
        me = os.getpid()
        if os.getsid(0) != me:
            return False
        for pid in procfs.session_members(me):
            if pid != me:
                self.signal_process(pid, signal.SIGKILL)
        return True

    # -- output -------------------------------------------------------------------

    def _on_output(self, capture: Capture, pid: int) -> None:
        # An event from this select() batch may be for a pipe an earlier
        # callback of the same batch has already closed (the reap drains).
        if capture.closed:
            return
        if not capture.read():
            self._close_capture(capture, pid)
        self._feed_followers()

    def _close_capture(self, capture: Capture, pid: int) -> None:
        """EOF: every writer is gone. Flush a last partial line and let go."""
        self.output.unwatch(capture)
        capture.finish()
        self.output.release(capture.destination)
        remaining = [c for c in self.captures.get(pid, []) if c is not capture]
        if remaining:
            self.captures[pid] = remaining
        else:
            self.captures.pop(pid, None)

    def follow(self, names: list[str], responder) -> None:
        """Send these companions' new lines to a tail -f client until it leaves."""
        _, newest = self.output.since(names, -1)
        self.followers.append([names, newest, responder])

    def _feed_followers(self) -> None:
        if not self.followers:
            return
        still = []
        for follower in self.followers:
            names, after, responder = follower
            if responder.closed:
                continue
            lines, follower[1] = self.output.since(names, after)
            if lines:
                responder.push({"ok": True, "lines": lines})
            still.append(follower)
        self.followers = still

    def reopen_output(self) -> None:
        self.output.reopen()  # never raises: a failing file logs and drops lines

    def close(self) -> None:
        self.output.close()
