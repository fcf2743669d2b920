"""Companion output: captured through pipes, written by the manager line by line.

Why the manager writes it and not the companion: only then can a file be
rotated by size without losing or splitting a line (the companion never holds
the file), can a line be timestamped, can ``tail`` read recent lines of any
companion, and does a crash's last words reach the file before the restart
(the manager drains the pipe before it handles the exit).

A companion that writes faster than the manager reads blocks on its full pipe:
it is slowed, never killed, and nothing is dropped.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import Callable

from . import safefs
from .spec import INHERIT, MERGE_WITH_STDOUT, CompanionSpec
from .targets import output_path

# A "line" longer than this without a newline is written out as it is, so a
# companion that never writes a newline cannot make the manager buffer forever.
MAX_LINE = 64 * 1024
# Recent lines kept per companion for `tail`.
TAIL_LINES = 1000

_sequence = itertools.count()  # orders lines across companions for a group's tail


class LogFile:
    """An append-only file, rotated by size at line boundaries (file -> file.1 ...)."""

    def __init__(self, path: str, maxbytes: int = 0, backups: int = 0,
                 owner: tuple[int, int] | None = None):
        self.path = path
        self.owner = owner  # (uid, gid) of the companion it is written for
        self.maxbytes = maxbytes
        self.backups = backups
        self.fd: int | None = None
        self.size = 0
        self.users = 0
        self.open()

    def open(self) -> None:
        self.fd = safefs.open_for_append(self.path, self.owner)
        self.size = os.fstat(self.fd).st_size

    def reopen(self) -> None:
        """For logrotate's move-and-signal: write to the path's new file."""
        self.close()
        self.open()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def write(self, data: bytes) -> None:
        """Write whole lines; rotate first when they would pass maxbytes."""
        if self.maxbytes and self.size and self.size + len(data) > self.maxbytes:
            try:
                self.rotate()
            except OSError:
                # Someone moved or removed the file under us (logrotate, an
                # operator): start a fresh one at the path and go on writing.
                self.close()
                self.open()
        _write_all(self.fd, data)
        self.size += len(data)

    def rotate(self) -> None:
        self.close()
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                older = f"{self.path}.{n}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
            self.open()
        else:
            # no backups kept: start the file afresh, as supervisord does
            # (through our own fd: truncating by path would follow a symlink)
            self.open()
            os.ftruncate(self.fd, 0)
            self.size = 0


class Destination:
    """Where one stream's lines go: a shared LogFile, or the manager's own fd."""

    def __init__(self, logfile: LogFile | None = None, fd: int | None = None):
        self.logfile = logfile
        self.fd = fd

    def write(self, data: bytes) -> None:
        if self.logfile is not None:
            self.logfile.write(data)
        else:
            _write_all(self.fd, data)

    def describe(self) -> str:
        return self.logfile.path if self.logfile else INHERIT


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            # an inherited terminal or pipe in non-blocking mode: wait for it
            import select
            select.select([], [fd], [])
            continue
        except OSError:
            return  # a vanished destination must not take the manager down
        view = view[written:]


class Capture:
    """One pipe from one companion process: split into lines, stamped, written."""

    def __init__(self, name: str, stream: str, fd: int, destination: Destination,
                 ring: collections.deque, timestamp_format: str | None):
        self.name = name
        self.stream = stream
        self.fd = fd
        self.destination = destination
        self.ring = ring
        self.timestamp_format = timestamp_format
        self.partial = b""
        self.closed = False

    def read(self) -> bool:
        """Read what is there; False at EOF (the caller then calls finish)."""
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            return False
        self._take(data)
        return True

    def drain(self) -> bool:
        """Read everything already in the pipe (its writer has exited); False at EOF."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return True  # something still holds the write end: the loop reads the rest
            except OSError:
                data = b""
            if not data:
                return False
            self._take(data)

    def _take(self, data: bytes) -> None:
        data = self.partial + data
        end = data.rfind(b"\n") + 1
        if not end and len(data) < MAX_LINE:
            self.partial = data
            return
        if not end:
            end = len(data)
        self.partial = data[end:]
        self._emit(data[:end] if data[end - 1:end] == b"\n" else data[:end] + b"\n")

    def _emit(self, lines: bytes) -> None:
        split = lines.splitlines(keepends=True)
        for line in split:
            self.ring.append((next(_sequence), self.name, self.stream,
                              line.rstrip(b"\n").decode("utf-8", "replace")))
        if self.timestamp_format:
            stamp = time.strftime(self.timestamp_format).encode() + b" "
            lines = b"".join(stamp + line for line in split)
        self.destination.write(lines)

    def finish(self) -> None:
        if self.closed:
            return
        if self.partial:
            self._emit(self.partial + b"\n")
            self.partial = b""
        os.close(self.fd)
        self.closed = True


class OutputRouter:
    """The manager's side of every companion's output."""

    def __init__(self):
        self.files: dict[tuple[str, int, int], LogFile] = {}
        self.rings: dict[str, collections.deque] = {}
        # (uid, gid) a log file made for this companion belongs to (None: ours)
        self.owner_of: Callable[[CompanionSpec], tuple[int, int] | None] = lambda spec: None

    def ring(self, name: str) -> collections.deque:
        if name not in self.rings:
            self.rings[name] = collections.deque(maxlen=TAIL_LINES)
        return self.rings[name]

    def _destination(self, spec: CompanionSpec, stream: str) -> Destination:
        value = getattr(spec, stream)
        if value == INHERIT:
            return Destination(fd=1 if stream == "stdout" else 2)
        path = os.path.abspath(output_path(spec, value))
        key = (path, getattr(spec, f"{stream}_maxbytes"), getattr(spec, f"{stream}_backups"))
        logfile = self.files.get(key)
        if logfile is None:
            logfile = self.files[key] = LogFile(path, key[1], key[2], self.owner_of(spec))
        logfile.users += 1
        return Destination(logfile=logfile)

    def pipes_for(self, spec: CompanionSpec) -> list[tuple[str, int, int, Destination]]:
        """Open the pipes (and files) for one process: [(stream, read_fd, write_fd, dest)].
        Opening errors propagate: the start fails with a clear reason."""
        streams = ["stdout"] if spec.stderr == MERGE_WITH_STDOUT else ["stdout", "stderr"]
        made = []
        try:
            for stream in streams:
                destination = self._destination(spec, stream)
                read_fd, write_fd = os.pipe()
                os.set_blocking(read_fd, False)
                made.append((stream, read_fd, write_fd, destination))
        except OSError:
            for _, read_fd, write_fd, destination in made:
                os.close(read_fd)
                os.close(write_fd)
                self.release(destination)
            raise
        return made

    def release(self, destination: Destination) -> None:
        logfile = destination.logfile
        if logfile is None:
            return
        logfile.users -= 1
        if logfile.users <= 0:
            logfile.close()
            self.files = {k: v for k, v in self.files.items() if v is not logfile}

    def close_in_child(self) -> None:
        """A forked companion must not hold the manager's log files (a rotated
        file would keep its disk space until that companion restarts)."""
        for logfile in self.files.values():
            if logfile.fd is not None:
                os.close(logfile.fd)

    def reopen(self) -> None:
        for logfile in self.files.values():
            try:
                logfile.reopen()
            except OSError:
                pass

    def tail(self, names: list[str], count: int) -> list[str]:
        """The last ``count`` lines of these companions, oldest first; each line
        names its instance when there are several."""
        entries = sorted(e for n in names for e in self.rings.get(n, ()))[-count:] if count else []
        if len(names) == 1:
            return [text for _, _, _, text in entries]
        return [f"{name}: {text}" for _, name, _, text in entries]

    def since(self, names: list[str], after: int) -> tuple[list[str], int]:
        """Lines newer than sequence number ``after``, and the newest number."""
        entries = sorted(e for n in names for e in self.rings.get(n, ()) if e[0] > after)
        newest = entries[-1][0] if entries else after
        if len(names) == 1:
            return [text for _, _, _, text in entries], newest
        return [f"{name}: {text}" for _, name, _, text in entries], newest
