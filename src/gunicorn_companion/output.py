"""Companion output: captured through pipes, written by the manager line by line.

Why the manager writes it and not the companion: only then can a file be
rotated by size without losing or splitting a line (the companion never holds
the file), can a line be timestamped, can ``tail`` read recent lines of any
companion, and does a crash's last words reach the file before the restart
(the manager drains the pipe before it handles the exit).

Why the manager never waits for a destination: its one loop also serves the
control socket, the timers and every other companion, so a write that waited
for a stalled reader of the inherited stdout (a paused terminal, a stuck log
shipper) would stop all of them. Each destination (a ``Sink``) is written
without blocking, and what it cannot take yet waits in its own bounded buffer.
Once that holds ``BUFFER_LIMIT`` bytes the manager stops reading the pipes of
the companions writing there: they block on their own full pipes, as they would
writing to that reader directly, and nothing else waits.

Why a failing destination drops lines instead of failing a companion: a log
directory removed by a careless logrotate, a full disk, a directory where the
file should be is no reason to stop or restart running work. The lines are
counted (``status`` shows them per companion), the failure is logged once and
again when it is over, and every later write (and USR1) tries again.
"""

from __future__ import annotations

import collections
import itertools
import os
import select
import selectors
import socket
import stat
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
READ_SIZE = 65536
# What a destination may hold for a reader that is not keeping up before the
# pipes of the companions writing to it are no longer read...
BUFFER_LIMIT = 1024 * 1024
# ...and what it may hold at all: past the limit only the drain of an exited
# companion's pipe adds (one pipe's content per exit). Beyond it lines are
# dropped and counted rather than letting the manager grow without bound.
BUFFER_HARD_LIMIT = 4 * BUFFER_LIMIT
# A drain reads at most this many chunks: an exited companion's pipe holds no
# more than its capacity (64 KiB unless enlarged); only a descendant still
# writing could keep it going, and the loop reads that later like any output.
DRAIN_READS = 16

_sequence = itertools.count()  # orders lines across companions for a group's tail


class Sink:
    """One destination of captured output, shared by every pipe writing there.

    Never blocks and never raises: what cannot be written yet waits (bounded),
    what cannot be written at all is dropped and counted against its companion.
    """

    def __init__(self, label: str, selector: selectors.BaseSelector, log,
                 dropped: collections.Counter):
        self.label = label  # what the log calls it: a path, or stdout/stderr
        self.selector = selector
        self.log = log
        self.dropped = dropped  # lines dropped, by companion (shared by every sink)
        self.fd: int | None = None
        self.pending: collections.deque[tuple[str, memoryview]] = collections.deque()
        self.pending_bytes = 0
        self.captures: set[Capture] = set()
        self.held_back = False  # the captures' pipes are not read while this is so
        self.watching: int | None = None  # the fd registered for EVENT_WRITE
        self.failure: str | None = None
        self.lost = 0  # lines dropped since the failure began
        self.users = 0

    # -- what a subclass provides ----------------------------------------------------

    def _ready(self, size: int) -> bool:
        """Prepare to write ``size`` bytes (open, rotate); False: cannot write now."""
        return self.fd is not None

    def _send(self, data: memoryview) -> int:
        """One non-blocking write: bytes written, or BlockingIOError/OSError."""
        return os.write(self.fd, data)

    def _written(self, size: int) -> None:
        """``size`` bytes reached the destination."""

    def _undo_cut_line(self, size: int) -> None:
        """The last ``size`` bytes written are the start of a line cut short."""

    # -- writing -----------------------------------------------------------------

    def write(self, data: bytes, owner: str) -> None:
        """Write whole lines of companion ``owner``, now or once the destination
        takes them; never blocks."""
        if self.pending:
            self._keep(memoryview(data), owner)  # behind what already waits: order kept
        elif not self._ready(len(data)):
            self._drop(memoryview(data), owner)
        else:
            self._write_now(memoryview(data), owner)
        self._adjust_flow()

    def _write_now(self, view: memoryview, owner: str) -> None:
        whole = view
        while view:
            try:
                written = self._send(view)
            except BlockingIOError:
                break
            except OSError as exc:
                # A file that took part of a line (a disk filling up) loses that
                # part too: later lines must not continue a cut one.
                done = len(whole) - len(view)
                cut = done - (bytes(whole[:done]).rfind(b"\n") + 1)
                if cut:
                    self._undo_cut_line(cut)
                self._fail(exc)
                self._drop(whole[done - cut:], owner)
                return
            self._written(written)
            view = view[written:]
        self._recovered()
        if view:
            self._keep(view, owner)

    def flush(self) -> None:
        """Write what waits, as far as the destination takes it now."""
        while self.pending:
            owner, data = self.pending[0]
            try:
                written = self._send(data)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail(exc)
                self.discard_pending()
                break
            self._recovered()
            self._written(written)
            self.pending_bytes -= written
            if written < len(data):
                self.pending[0] = (owner, data[written:])
                break
            self.pending.popleft()
        self._adjust_flow()

    def discard_pending(self) -> None:
        for owner, data in self.pending:
            self._drop(data, owner)
        self.pending.clear()
        self.pending_bytes = 0

    def _keep(self, view: memoryview, owner: str) -> None:
        if self.pending_bytes + len(view) > BUFFER_HARD_LIMIT:
            self._fail(f"more than {BUFFER_HARD_LIMIT // 2**20} MiB waiting to be written")
            self._drop(view, owner)
            return
        if not view.readonly:
            view = memoryview(bytes(view))  # the caller may reuse its buffer
        self.pending.append((owner, view))
        self.pending_bytes += len(view)

    def _drop(self, view: memoryview, owner: str) -> None:
        lines = bytes(view).count(b"\n")
        self.dropped[owner] += lines
        self.lost += lines

    def _fail(self, why: OSError | str) -> None:
        if self.failure is None:
            self.failure = (why.strerror or str(why)) if isinstance(why, OSError) else why
            self.log.error("Companion output to %s failed (%s): dropping lines until it "
                           "works again", self.label, self.failure)

    def _recovered(self) -> None:
        if self.failure is not None:
            self.log.info("Companion output to %s works again (%d lines dropped)",
                          self.label, self.lost)
            self.failure = None
            self.lost = 0

    # -- flow control --------------------------------------------------------------

    def _adjust_flow(self) -> None:
        """Watch the fd for room while something waits; hold back the writers'
        pipes while too much waits, and read them again once half of it is out."""
        want = self.fd if self.pending else None
        if want != self.watching:
            self._unwatch()
            if want is not None:
                self.selector.register(want, selectors.EVENT_WRITE, lambda key, mask: self.flush())
                self.watching = want
        if not self.held_back and self.pending_bytes >= BUFFER_LIMIT:
            self.held_back = True
            for capture in self.captures:
                capture.pause()
        elif self.held_back and self.pending_bytes < BUFFER_LIMIT // 2:
            self.held_back = False
            for capture in self.captures:
                capture.resume()

    def _unwatch(self) -> None:
        if self.watching is not None:
            self.selector.unregister(self.watching)  # before its fd is closed and reused
            self.watching = None

    def attach(self, capture: Capture) -> None:
        self.captures.add(capture)
        if not self.held_back:
            capture.resume()

    def detach(self, capture: Capture) -> None:
        capture.pause()
        self.captures.discard(capture)

    def close(self) -> None:
        self._unwatch()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class LogFile(Sink):
    """An append-only file, rotated by size at line boundaries (file -> file.1 ...).

    When it cannot be opened, rotated or written, its lines are dropped and the
    next write (or a reopen on USR1) tries again."""

    def __init__(self, path: str, maxbytes: int = 0, backups: int = 0,
                 owner: tuple[int, int] | None = None, **sink):
        super().__init__(path, **sink)
        self.path = path
        self.owner = owner  # (uid, gid) of the companion it is written for
        self.maxbytes = maxbytes
        self.backups = backups
        self.size = 0
        self._try_open()

    def open(self) -> None:
        self.fd = safefs.open_for_append(self.path, self.owner)
        self.size = os.fstat(self.fd).st_size

    def _try_open(self) -> bool:
        try:
            self.open()
        except OSError as exc:
            self._fail(exc)
            return False
        return True

    def reopen(self) -> None:
        """For logrotate's move-and-signal: write to the path's new file."""
        self.close()
        if self._try_open():
            self.flush()  # what waited for the old file goes to the new one
        else:
            self.discard_pending()

    def _ready(self, size: int) -> bool:
        if self.fd is None and not self._try_open():
            return False
        if self.maxbytes and self.size and self.size + size > self.maxbytes:
            try:
                self.rotate()
            except OSError:
                # Someone moved or removed the file under us (logrotate, an
                # operator): start a fresh one at the path and go on writing.
                self.close()
                return self._try_open()
        return True

    def _written(self, size: int) -> None:
        self.size += size

    def _undo_cut_line(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, os.fstat(self.fd).st_size - size)
            self.size -= size
        except OSError:
            pass  # the cut line stays: the failure is logged either way

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


class InheritedStream(Sink):
    """The manager's own stdout or stderr (the master's: a terminal, the
    journal, a pipe), written without ever blocking.

    Setting O_NONBLOCK on fd 1 itself would change the open file description we
    share with the master and its workers, whose blocking writes would then fail.
    So a pipe or terminal is opened afresh through /proc (a new description of
    the same pipe or device), a socket is sent to with MSG_DONTWAIT, and a
    regular file is written at fd 1 itself (it never blocks, and a Gunicorn that
    points fd 1 at a new file on USR1 is followed).
    """

    def __init__(self, fd: int, **sink):
        super().__init__("stdout" if fd == 1 else "stderr", **sink)
        self.inherited = fd
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of what fd 1 was
        self.socket: socket.socket | None = None
        self.owned = False  # self.fd is ours to close (not the inherited fd itself)
        self.small_writes = False  # the fallback: a poll first, then at most PIPE_BUF
        self._attach()

    def _attach(self) -> None:
        try:
            st = os.fstat(self.inherited)
        except OSError as exc:
            self._fail(exc)  # closed: its lines are counted, not written
            return
        self.identity = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode):
            self.fd = self.inherited
            return
        self.owned = True
        if stat.S_ISSOCK(st.st_mode):
            self.socket = socket.socket(fileno=os.dup(self.inherited))
            self.fd = self.socket.fileno()
            return
        try:
            self.fd = os.open(f"/proc/self/fd/{self.inherited}",
                              os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            # no /proc, or a pipe whose reader is gone: a write of at most
            # PIPE_BUF bytes into a pipe that polls writable cannot block
            self.fd = os.dup(self.inherited)
            self.small_writes = os.get_blocking(self.inherited)

    def refresh(self) -> None:
        """USR1: follow fd 1 to what it is now, if someone pointed it elsewhere."""
        try:
            st = os.fstat(self.inherited)
            if (st.st_dev, st.st_ino) == self.identity:
                return self.flush()
        except OSError:
            pass
        self.close()
        self._attach()
        self.flush()

    def _send(self, data: memoryview) -> int:
        if self.socket is not None:
            return self.socket.send(data, socket.MSG_DONTWAIT)
        if self.small_writes:
            if not select.select([], [self.fd], [], 0)[1]:
                raise BlockingIOError
            data = data[:select.PIPE_BUF]
        return os.write(self.fd, data)

    def close(self) -> None:
        self._unwatch()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        elif self.owned and self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self.owned = self.small_writes = False


class Capture:
    """One pipe from one companion process: split into lines, stamped, written.

    Read by the loop while its destination takes more (``reading``); while the
    destination is held back the pipe is left alone, so the companion blocks on
    it as it would on a slow terminal."""

    def __init__(self, name: str, stream: str, fd: int, destination: Sink,
                 ring: collections.deque, timestamp_format: str | None):
        self.name = name
        self.stream = stream
        self.fd = fd
        self.destination = destination
        self.ring = ring
        self.timestamp_format = timestamp_format
        self.partial = b""
        self.closed = False
        self.callback = None  # the loop's handler for this pipe (see OutputRouter.watch)
        self.reading = False  # registered with the selector

    def pause(self) -> None:
        if self.reading:
            self.destination.selector.unregister(self.fd)
            self.reading = False

    def resume(self) -> None:
        if not self.reading and not self.closed and self.callback is not None:
            self.destination.selector.register(self.fd, selectors.EVENT_READ, self.callback)
            self.reading = True

    def read(self) -> bool:
        """Read what is there; False at EOF (the caller then calls finish)."""
        if not self.reading:
            return True  # held back since the selector reported it: leave it in the pipe
        return self._read_once() is not None

    def drain(self) -> bool:
        """Read what is already in the pipe (its writer has exited), even while
        the destination is held back; False at EOF."""
        for _ in range(DRAIN_READS):
            size = self._read_once()
            if size is None:
                return False
            if not size:
                return True  # something still holds the write end: the loop reads the rest
        return True

    def _read_once(self) -> int | None:
        """Bytes read (0: nothing there now), None at EOF."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            data = b""
        if not data:
            return None
        self._take(data)
        return len(data)

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
        self.destination.write(lines, self.name)

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

    def __init__(self, selector: selectors.BaseSelector, log):
        self.selector = selector
        self.log = log
        self.files: dict[tuple[str, int, int], LogFile] = {}
        self.streams: dict[int, InheritedStream] = {}  # by the manager's fd: 1, 2
        self.rings: dict[str, collections.deque] = {}
        self.dropped: collections.Counter[str] = collections.Counter()  # lines, by companion
        # (uid, gid) a log file made for this companion belongs to (None: ours)
        self.owner_of: Callable[[CompanionSpec], tuple[int, int] | None] = lambda spec: None

    def ring(self, name: str) -> collections.deque:
        if name not in self.rings:
            self.rings[name] = collections.deque(maxlen=TAIL_LINES)
        return self.rings[name]

    def _destination(self, spec: CompanionSpec, stream: str) -> Sink:
        value = getattr(spec, stream)
        shared = {"selector": self.selector, "log": self.log, "dropped": self.dropped}
        if value == INHERIT:
            fd = 1 if stream == "stdout" else 2
            if fd not in self.streams:
                self.streams[fd] = InheritedStream(fd, **shared)
            return self.streams[fd]
        path = os.path.abspath(output_path(spec, value))
        key = (path, getattr(spec, f"{stream}_maxbytes"), getattr(spec, f"{stream}_backups"))
        logfile = self.files.get(key)
        if logfile is None:
            logfile = self.files[key] = LogFile(path, key[1], key[2], self.owner_of(spec),
                                                **shared)
        logfile.users += 1
        return logfile

    def pipes_for(self, spec: CompanionSpec) -> list[tuple[str, int, int, Sink]]:
        """Open the pipes for one process: [(stream, read_fd, write_fd, destination)].
        A destination that cannot be opened does not stop the start: its lines
        are dropped and counted until it can. Failing to make a pipe propagates:
        the start fails with a clear reason."""
        streams = ["stdout"] if spec.stderr == MERGE_WITH_STDOUT else ["stdout", "stderr"]
        made = []
        try:
            for stream in streams:
                destination = self._destination(spec, stream)
                try:
                    read_fd, write_fd = os.pipe()
                except OSError:
                    self.release(destination)
                    raise
                os.set_blocking(read_fd, False)
                made.append((stream, read_fd, write_fd, destination))
        except OSError:
            for _, read_fd, write_fd, destination in made:
                os.close(read_fd)
                os.close(write_fd)
                self.release(destination)
            raise
        return made

    def watch(self, capture: Capture, callback) -> None:
        """Have the loop read this pipe (whenever its destination takes more)."""
        capture.callback = callback
        capture.destination.attach(capture)

    def unwatch(self, capture: Capture) -> None:
        capture.destination.detach(capture)  # before the fd is closed and reused

    def release(self, destination: Sink) -> None:
        if not isinstance(destination, LogFile):
            return  # the inherited streams stay for the manager's life
        destination.users -= 1
        if destination.users <= 0:
            destination.flush()
            destination.discard_pending()  # counted: a FIFO nobody read
            destination.close()
            self.files = {k: v for k, v in self.files.items() if v is not destination}

    def close_in_child(self) -> None:
        """A forked companion must not hold the manager's log files (a rotated
        file would keep its disk space until that companion restarts), nor its
        own descriptors of the inherited streams."""
        for logfile in self.files.values():
            if logfile.fd is not None:
                os.close(logfile.fd)
        for stream in self.streams.values():
            if stream.owned:
                os.close(stream.fd)

    def reopen(self) -> None:
        """USR1: reopen every file; a failing one logs and drops, never raises."""
        for logfile in self.files.values():
            logfile.reopen()
        for stream in self.streams.values():
            stream.refresh()

    def close(self) -> None:
        """The manager exits: what still waits for a slow destination is written
        if it takes it now, else counted and logged as dropped."""
        for sink in [*self.files.values(), *self.streams.values()]:
            sink.flush()
            if sink.pending:
                before = sink.lost
                sink.discard_pending()
                self.log.error("Companion output to %s: %d lines dropped, not taken before "
                               "the companion manager exited", sink.label, sink.lost - before)
            sink.close()

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
