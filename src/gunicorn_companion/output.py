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
import fcntl
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
# Recent lines kept per companion for `tail`...
TAIL_LINES = 1000
# ...counted (to let older ones go) once a companion's recent output has grown
# past this and doubled since the last count (see Ring).
TAIL_BYTES = 512 * 1024
# How much of the end of a read is counted first (see Ring._trim).
TAIL_SCAN = 128 * 1024
READ_SIZE = 65536
# A pipe that fills up as fast as it is read is read this many times in a
# row, and what was read written at once: fewer, bigger writes (the cost of a
# write to a file is mostly per call).
READS_AT_ONCE = 16
# Buffers handed to one os.writev (the kernel takes at most IOV_MAX, 1024).
WRITE_BUFFERS = 64
NEWLINE = ord("\n")
# What a destination may hold for a reader that is not keeping up before the
# pipes of the companions writing to it are no longer read...
BUFFER_LIMIT = 1024 * 1024
# ...and what it may hold at all: past the limit only the drain of an exited
# companion's pipe adds (one pipe's content per exit). Beyond it lines are
# dropped and counted rather than letting the manager grow without bound.
BUFFER_HARD_LIMIT = 4 * BUFFER_LIMIT
# A pipe found full when read is enlarged to this (once), so a chatty
# companion is read a MiB per wakeup, not 64 KiB: fewer wakeups and writes.
# The kernel charges a pipe's whole size to its user's pipe-user-pages
# (default 64 MiB; past it, every new pipe that user makes gets two pages), so
# only BIG_PIPES pipes are enlarged at a time; the default (and the most an
# unprivileged process may set) is /proc/sys/fs/pipe-max-size, 1 MiB.
BIG_PIPE_SIZE = 1024 * 1024
BIG_PIPES = 8
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux
# A drain reads at most this many chunks: an exited companion's pipe holds no
# more than its capacity (BIG_PIPE_SIZE at most); only a descendant still
# writing could keep it going, and the loop reads that later like any output.
DRAIN_READS = BIG_PIPE_SIZE // READ_SIZE

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

    def _send(self, buffers: list[memoryview]) -> int:
        """One non-blocking write of these buffers in order: bytes written, or
        BlockingIOError/OSError."""
        return os.writev(self.fd, buffers)

    def _written(self, size: int) -> None:
        """``size`` bytes reached the destination."""

    def _undo_cut_line(self, size: int) -> None:
        """The last ``size`` bytes written are the start of a line cut short."""

    # -- writing -----------------------------------------------------------------

    def write(self, pieces: list[bytes | memoryview], owner: str) -> None:
        """Write whole lines of companion ``owner`` (the pieces, in order, end in
        a newline), now or once the destination takes them; never blocks."""
        views = [memoryview(piece) for piece in pieces if piece]
        if self.pending:
            self._keep(views, owner)  # behind what already waits: order kept
        elif not self._ready(sum(map(len, views))):
            self._drop(views, owner)
        else:
            self._write_now(views, owner)
        self._adjust_flow()

    def _write_now(self, views: list[memoryview], owner: str) -> None:
        whole, done = views, 0
        while views:
            try:
                written = self._send(views[:WRITE_BUFFERS])
            except BlockingIOError:
                break
            except OSError as exc:
                # A file that took part of a line (a disk filling up) loses that
                # part too: later lines must not continue a cut one.
                joined = b"".join(whole)
                cut = done - (joined.rfind(b"\n", 0, done) + 1)
                if cut:
                    self._undo_cut_line(cut)
                self._fail(exc)
                self._drop([memoryview(joined)[done - cut:]], owner)
                return
            self._written(written)
            done += written
            views = _advance(views, written)
        self._recovered()
        if views:
            self._keep(views, owner)

    def flush(self) -> None:
        """Write what waits, as far as the destination takes it now."""
        while self.pending:
            batch = [data for _, data in itertools.islice(self.pending, WRITE_BUFFERS)]
            try:
                written = self._send(batch)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail(exc)
                self.discard_pending()
                break
            self._recovered()
            self._written(written)
            self.pending_bytes -= written
            short = written < sum(map(len, batch))
            while written:
                owner, data = self.pending[0]
                if written < len(data):
                    self.pending[0] = (owner, data[written:])
                    break
                written -= len(data)
                self.pending.popleft()
            if short:
                break
        self._adjust_flow()

    def discard_pending(self) -> None:
        for owner, data in self.pending:
            self._drop([data], owner)
        self.pending.clear()
        self.pending_bytes = 0

    def _keep(self, views: list[memoryview], owner: str) -> None:
        size = sum(map(len, views))
        if self.pending_bytes + size > BUFFER_HARD_LIMIT:
            self._fail(f"more than {BUFFER_HARD_LIMIT // 2**20} MiB waiting to be written")
            self._drop(views, owner)
            return
        for view in views:
            if not view.readonly:
                view = memoryview(bytes(view))  # the caller may reuse its buffer
            self.pending.append((owner, view))
        self.pending_bytes += size

    def _drop(self, views: list[memoryview], owner: str) -> None:
        lines = sum(bytes(view).count(b"\n") for view in views)
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

    def _send(self, buffers: list[memoryview]) -> int:
        if self.socket is not None:
            return self.socket.sendmsg(buffers, [], socket.MSG_DONTWAIT)
        if self.small_writes:
            if not select.select([], [self.fd], [], 0)[1]:
                raise BlockingIOError
            return os.write(self.fd, buffers[0][:select.PIPE_BUF])
        return os.writev(self.fd, buffers)

    def close(self) -> None:
        self._unwatch()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        elif self.owned and self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self.owned = self.small_writes = False


class BigPipes:
    """How many more pipes may be enlarged (see BIG_PIPES)."""

    def __init__(self, limit: int = BIG_PIPES):
        self.free = limit

    def enlarge(self, fd: int) -> bool:
        if not self.free or F_SETPIPE_SZ is None:
            return False
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, BIG_PIPE_SIZE)
        except OSError:
            return False  # over the user's pipe limits, or a lower pipe-max-size
        self.free -= 1
        return True

    def release(self) -> None:
        self.free += 1


def _advance(views: list[memoryview], size: int) -> list[memoryview]:
    """What is left of ``views`` after the first ``size`` bytes were written."""
    for index, view in enumerate(views):
        if size < len(view):
            return [view[size:], *views[index + 1:]]
        size -= len(view)
    return []


def _newest_lines(pieces: list[bytes | memoryview]) -> tuple[list[bytes], bool]:
    """A copy of the whole lines in the last TAIL_SCAN bytes of ``pieces``
    (which end in a newline), and whether older lines were left out."""
    total = sum(map(len, pieces))
    if total <= TAIL_SCAN:
        return [b"".join(pieces)], False
    last = b"".join(pieces)[-TAIL_SCAN:] if len(pieces[-1]) < TAIL_SCAN else bytes(
        pieces[-1][-TAIL_SCAN:])
    start = last.find(b"\n") + 1
    if start == len(last):
        start = 0  # no whole line fits: the end of the newest piece, as a line
    return [last[start:]], True


def _newlines(piece: bytes | memoryview) -> int:
    return (bytes(piece) if isinstance(piece, memoryview) else piece).count(b"\n")


class Ring:
    """The recent output of one companion, for ``tail``: the chunks as they were
    read, split into lines only when someone asks.

    Holds at least the last ``TAIL_LINES`` lines. Lines are counted only when
    the ring is trimmed, from the newest chunk back, and a trim waits until the
    ring has doubled since the last one (and holds more than TAIL_BYTES or
    2 x TAIL_LINES chunks): counting every chunk as it arrives cost a chatty
    companion as much of the manager's time as writing it."""

    def __init__(self) -> None:
        # (sequence, companion, stream, pieces of lines ending in a newline)
        self.chunks: collections.deque[tuple[int, str, str, list]] = collections.deque()
        self.size = 0
        self.trim_at = TAIL_BYTES

    def add(self, sequence: int, name: str, stream: str, pieces: list,
            cut: bool = False) -> None:
        """``cut``: older lines of this stream were left out of ``pieces``, so
        the ones kept before them would not run on from these: dropped."""
        if cut:
            self.chunks = collections.deque(c for c in self.chunks if c[2] != stream)
            self.size = sum(len(p) for c in self.chunks for p in c[3])
        self.chunks.append((sequence, name, stream, pieces))
        self.size += sum(map(len, pieces))
        if self.size > self.trim_at or len(self.chunks) > 2 * TAIL_LINES:
            self._trim()

    def _trim(self) -> None:
        lines = keep = 0
        for chunk in reversed(self.chunks):
            keep += 1
            for piece in reversed(chunk[3]):
                # the end of a big piece first: it usually holds enough lines
                lines += _newlines(piece[-TAIL_SCAN:])
                if lines < TAIL_LINES and len(piece) > TAIL_SCAN:
                    lines += _newlines(piece[:-TAIL_SCAN])
                if lines >= TAIL_LINES:
                    break
            if lines >= TAIL_LINES:
                break
        while len(self.chunks) > keep:
            self.size -= sum(map(len, self.chunks.popleft()[3]))
        self.trim_at = max(TAIL_BYTES, 2 * self.size)

    def newest(self, count: int, after: int = -1) -> list[tuple[int, int, str, str]]:
        """The last ``count`` lines (at most TAIL_LINES) of chunks newer than
        sequence ``after``, oldest first: (sequence, index in its chunk, name, text)."""
        count = min(count, TAIL_LINES)
        picked: list[tuple[int, int, str, str]] = []
        for sequence, name, _, pieces in reversed(self.chunks):
            if len(picked) >= count or sequence <= after:
                break
            texts = b"".join(pieces).split(b"\n")[:-1]  # every chunk ends with a newline
            for index in range(len(texts) - 1, -1, -1):
                if len(picked) >= count:
                    break
                picked.append((sequence, index, name,
                               texts[index].decode("utf-8", "replace")))
        picked.reverse()
        return picked


class Capture:
    """One pipe from one companion process: split into lines, stamped, written.

    Read by the loop while its destination takes more (``reading``); while the
    destination is held back the pipe is left alone, so the companion blocks on
    it as it would on a slow terminal."""

    def __init__(self, name: str, stream: str, fd: int, destination: Sink,
                 ring: Ring, timestamp_format: str | None):
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
        self.big_pipes: BigPipes | None = None  # set by OutputRouter.watch
        self.enlarged: bool | None = None  # None: not tried yet
        self.buffer: bytearray | None = None  # an enlarged pipe's reads (see _read_into_buffer)

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
        return self._read(READS_AT_ONCE) is not None

    def drain(self) -> bool:
        """Read what is already in the pipe (its writer has exited), even while
        the destination is held back; False at EOF."""
        for _ in range(DRAIN_READS):
            size = self._read(1)
            if size is None:
                return False
            if not size:
                return True  # something still holds the write end: the loop reads the rest
        return True

    def _read(self, reads: int) -> int | None:
        """Read up to ``reads`` chunks while the pipe keeps them coming, and pass
        them on together (one write for all): bytes read (0: nothing there now),
        None at EOF."""
        if self.buffer is not None:
            return self._read_into_buffer()
        chunks: list[bytes] = []
        eof = False
        for _ in range(reads):
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                eof = True
                break
            chunks.append(data)
            if len(data) < READ_SIZE:
                break  # the pipe is empty now: no use asking again
            if self.enlarged is None and self.big_pipes is not None:
                self.enlarged = self.big_pipes.enlarge(self.fd)  # it filled up: a chatty one
                if self.enlarged:
                    self.buffer = bytearray(BIG_PIPE_SIZE)
        if chunks:
            self._take(chunks)
        return None if eof else sum(map(len, chunks))

    def _read_into_buffer(self) -> int | None:
        """An enlarged pipe: read whole into this capture's own buffer, used
        again for every read. Fresh buffers of that size (os.read's) cost the
        manager more than the copying: glibc's malloc gives them back to the
        kernel and faults them in again, page by page, on every read
        (benchmarks/README.md, "Output"). What outlives the call is copied:
        the unfinished line, the ring's share, and what the destination
        cannot take yet (Sink._keep)."""
        try:
            size = os.readv(self.fd, [self.buffer])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            size = 0
        if not size:
            return None
        buffer = self.buffer
        end = buffer.rfind(b"\n", 0, size) + 1
        if not end:
            if len(self.partial) + size < MAX_LINE:
                self.partial += buffer[:size]
                return size
            end = size  # too long: cut here
        pieces: list[bytes | memoryview] = [self.partial] if self.partial else []
        pieces.append(memoryview(buffer)[:end])
        if buffer[end - 1] != NEWLINE:
            pieces.append(b"\n")
        self.partial = bytes(buffer[end:size])
        if len(self.partial) >= MAX_LINE:
            pieces += [self.partial, b"\n"]  # a line too long: written as it is
            self.partial = b""
        self._emit(pieces)
        return size

    def _take(self, chunks: list[bytes]) -> None:
        # Whole reads, never line by line, and no copies: the lines go to the
        # ring and to the destination as the bytes read (the last read's
        # lines as a view), and os.writev writes them, after the previous
        # read's unfinished line, in one call. A companion printing short
        # lines as fast as it can costs the manager per read, not per line
        # (benchmarks/README.md, "Output").
        for last in range(len(chunks) - 1, -1, -1):
            end = chunks[last].rfind(b"\n") + 1
            if end:
                break
        else:
            if len(self.partial) + sum(map(len, chunks)) < MAX_LINE:
                self.partial += b"".join(chunks)
                return
            last, end = len(chunks) - 1, len(chunks[-1])  # too long: cut here
        pieces = [self.partial, *chunks[:last]] if self.partial else chunks[:last]
        pieces.append(memoryview(chunks[last])[:end])
        if chunks[last][end - 1] != NEWLINE:
            pieces.append(b"\n")
        self.partial = chunks[last][end:] + b"".join(chunks[last + 1:])
        if len(self.partial) >= MAX_LINE:
            pieces += [self.partial, b"\n"]  # a line too long: written as it is
            self.partial = b""
        self._emit(pieces)

    def _emit(self, pieces: list[bytes | memoryview]) -> None:
        """Lines that end in a newline: into the ring for ``tail``, to the destination."""
        if self.buffer is None:
            self.ring.add(next(_sequence), self.name, self.stream, pieces)
        else:
            # the buffer is read into again: the ring keeps a copy of the
            # newest lines only (enough for TAIL_LINES of up to 128 bytes)
            self.ring.add(next(_sequence), self.name, self.stream, *_newest_lines(pieces))
        if self.timestamp_format:
            # One time stamp per read (they arrived together), put in front
            # of each line by bytes.replace: a C loop, not a Python one.
            stamp = time.strftime(self.timestamp_format).encode() + b" "
            lines = b"".join(pieces)
            pieces = [stamp, lines[:-1].replace(b"\n", b"\n" + stamp), b"\n"]
        self.destination.write(pieces, self.name)

    def finish(self) -> None:
        if self.closed:
            return
        if self.partial:
            self._emit([self.partial, b"\n"])
            self.partial = b""
        os.close(self.fd)
        self.closed = True
        if self.enlarged:
            self.big_pipes.release()
            self.enlarged = False
        self.buffer = None


class OutputRouter:
    """The manager's side of every companion's output."""

    def __init__(self, selector: selectors.BaseSelector, log):
        self.selector = selector
        self.log = log
        self.files: dict[tuple[str, int, int], LogFile] = {}
        self.streams: dict[int, InheritedStream] = {}  # by the manager's fd: 1, 2
        self.rings: dict[str, Ring] = {}
        self.dropped: collections.Counter[str] = collections.Counter()  # lines, by companion
        self.big_pipes = BigPipes()
        # (uid, gid) a log file made for this companion belongs to (None: ours)
        self.owner_of: Callable[[CompanionSpec], tuple[int, int] | None] = lambda spec: None

    def ring(self, name: str) -> Ring:
        if name not in self.rings:
            self.rings[name] = Ring()
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
        capture.big_pipes = self.big_pipes
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
        if not count:
            return []
        entries = sorted(e for n in names if n in self.rings
                         for e in self.rings[n].newest(count))[-count:]
        return self._texts(names, entries)

    def since(self, names: list[str], after: int) -> tuple[list[str], int]:
        """Lines newer than sequence number ``after``, and the newest number."""
        entries = sorted(e for n in names if n in self.rings
                         for e in self.rings[n].newest(TAIL_LINES, after))
        newest = entries[-1][0] if entries else after
        return self._texts(names, entries), newest

    @staticmethod
    def _texts(names: list[str], entries: list[tuple[int, int, str, str]]) -> list[str]:
        if len(names) == 1:
            return [text for _, _, _, text in entries]
        return [f"{name}: {text}" for _, _, name, text in entries]
