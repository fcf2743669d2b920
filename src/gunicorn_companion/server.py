"""The manager's control socket: non-blocking, inside the manager's own loop.

No threads (the manager forks), no blocking call: every connection has its
own input decoder and output buffer, so a slow or idle client costs a file
descriptor and nothing else. Replies go out in request order per connection,
even when an earlier request (``stop``) is answered only once its companion
has stopped.
"""

from __future__ import annotations

import collections
import errno
import os
import selectors
import socket
import stat
import struct
from collections.abc import Callable

from . import procfs, protocol, safefs
from .privileges import Identity

# A peer that pipelines requests without reading its replies stops being read
# once this much output waits for it; it cannot make the manager buffer more.
MAX_OUTPUT = 1024 * 1024
# Connections beyond this are told so and closed at once.
MAX_CONNECTIONS = 256
_UCRED = struct.Struct("3i")  # pid, uid, gid: struct ucred
# The peer's supplementary groups as they were at connect() (Linux 4.13+);
# the socket module has no name for it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_PEERGROUPS_BUFFER = 1024  # the most getsockopt() takes from Python: 256 groups


def peer_groups(sock: socket.socket, pid: int) -> set[int]:
    """A connected peer's supplementary groups: SO_PEERGROUPS, or (an older
    kernel, more than 256 groups) /proc/PID/status as it is now."""
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BUFFER)
    except OSError:
        return procfs.supplementary_groups(pid)
    return set(struct.unpack(f"{len(data) // 4}I", data))


class ControlSocketError(Exception):
    """The control socket cannot be set up; the message says why and what to do."""


class Connection:
    """One client. Requests run one at a time, in order: a request that waits
    (``stop`` answers once stopped) holds back the ones behind it, so a
    pipelined ``stop`` then ``start`` means what it says."""

    def __init__(self, server: "ControlServer", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.decoder = protocol.LineDecoder()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.inbox_bytes = 0
        self.output = bytearray()
        self.busy = False  # a request is waiting for its reply
        self.peer_closed = False  # the peer will send nothing more
        self.closing = False  # close once the output is flushed
        self.refused = False  # answered with a refusal; reads are discarded
        self.streaming = False  # a stream (tail -f) runs until the client hangs up
        self.closed = False
        self.events = 0

    # -- selector plumbing ---------------------------------------------------------

    def _want(self) -> None:
        if self.closed:
            return
        events = 0
        backlog = len(self.output) + self.inbox_bytes
        if not (self.peer_closed or self.closing) and backlog < MAX_OUTPUT:
            events |= selectors.EVENT_READ
        if self.output:
            events |= selectors.EVENT_WRITE
        if events == self.events:
            return
        selector = self.server.selector
        if self.events and events:
            selector.modify(self.sock, events, self.on_event)
        elif events:
            selector.register(self.sock, events, self.on_event)
        else:
            selector.unregister(self.sock)
        self.events = events

    def on_event(self, key, mask) -> None:
        if mask & selectors.EVENT_READ:
            self._read()
        if mask & selectors.EVENT_WRITE and not self.closed:
            self._write()
            self._pump()  # room again for requests held back by MAX_OUTPUT
        self._settle()

    def _settle(self) -> None:
        if self.closed:
            return
        if self.output and not self.events & selectors.EVENT_WRITE:
            # Try at once: a reply nearly always fits the socket buffer, and
            # waiting for the selector to say so costs a loop turn per reply.
            self._write()
            if self.closed:
                return
        done = not self.busy and not self.inbox
        if not self.output and (self.closing or (self.peer_closed and (done or self.refused))):
            self.close()
            return
        self._want()

    # -- reading and answering ---------------------------------------------------

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if self.refused:
            # Keep reading (and dropping) until the peer closes: closing at
            # once would make its pending send fail with EPIPE before it could
            # read why it was refused.
            self.peer_closed = not data
            return
        if not data and self.streaming:
            self.close()  # the follower left; nothing else will ever end its stream
            return
        if not data:
            # The peer finished sending (socat does this after its input):
            # answer a last request that lacked its newline, then close once
            # every reply is out.
            self.peer_closed = True
            data = b"\n"
        for line in self.decoder.feed(data):
            self.inbox.append(line)
            self.inbox_bytes += len(line)
        if self.decoder.overflowed:
            self.inbox.append(b"")  # marks where the refused line was
        self._pump()

    def _pump(self) -> None:
        # Stop answering while a peer that does not read has MAX_OUTPUT
        # waiting: the rest of its pipelined requests wait in the inbox.
        while (self.inbox and not self.busy and not self.closing
               and len(self.output) < MAX_OUTPUT):
            line = self.inbox.popleft()
            self.inbox_bytes -= len(line)
            if not line:  # the overflow mark: refuse, then close
                self.send(protocol.error(
                    "line_too_long", f"request line longer than {protocol.MAX_LINE} bytes; "
                    "closing the connection"))
                self.closing = True
                return
            self._answer(line)

    def _answer(self, line: bytes) -> None:
        request = protocol.parse_request(line)
        if isinstance(request, protocol.ProtocolError):
            self.send(protocol.error(request.code, request.message))
            return
        self.busy = True
        respond = Responder(self)
        try:
            self.server.handle(request, respond)
        except Exception as exc:  # a bug in a handler must not take the manager down
            self.server.log.exception("Control command %r failed", request.cmd)
            respond(protocol.error("internal_error", f"internal error in {request.cmd!r}: {exc}"))
        respond.in_handler = False

    def send(self, reply: dict) -> None:
        if not self.closed:
            self.output += protocol.encode(reply)

    def _write(self) -> None:
        try:
            sent = self.sock.send(self.output)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.output[:sent]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.events:
            self.server.selector.unregister(self.sock)
        self.sock.close()
        self.server.connections.discard(self)
        self.server.resume_accepting()


class Responder:
    """How a handler answers: ``respond(reply)`` once, at once or later from
    the loop; ``respond.push(reply)`` for each reply of a stream (tail -f),
    which ends only when the client goes away (``respond.closed``)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.answered = False
        self.in_handler = True

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def __call__(self, reply: dict) -> None:
        if self.answered:
            return
        self.answered = True
        self.conn.busy = False
        self.conn.send(reply)
        if not self.in_handler:  # answered later, from the loop: go on with the rest
            self.conn._pump()
            self.conn._settle()

    def push(self, reply: dict, limit: int = MAX_OUTPUT) -> None:
        """One more reply of a stream; the client is dropped instead once
        ``limit`` bytes already wait for it."""
        if self.answered or self.conn.closed:
            return
        self.conn.streaming = True
        if len(self.conn.output) > limit:
            # a follower that stopped reading: drop it rather than buffer forever
            self.conn.close()
            return
        self.conn.send(reply)
        if not self.in_handler:
            self.conn._settle()


class ControlServer:
    """Listens on a UNIX socket; ``handle(request, respond)`` does the work."""

    def __init__(self, path: str, mode: int, *, selector: selectors.BaseSelector,
                 handle: Callable[[protocol.Request, Callable[[dict], None]], None], log,
                 owner: Identity | None = None):
        self.path = path
        self.mode = mode
        self.selector = selector
        self.handle = handle
        self.log = log
        self.listener: socket.socket | None = None
        self.inode: int | None = None
        self.connections: set[Connection] = set()
        # Who may connect besides root: the socket's owner and (when the mode
        # lets it in) its group. Gunicorn's user, even when the manager kept root.
        self.uid, self.gid = (owner.uid, owner.gid) if owner else (os.geteuid(), os.getegid())
        self.accepting = True
        self.accepting_blocked = False  # set on the way out

    # -- setup -------------------------------------------------------------------------

    def bind(self, take_over: bool = False) -> None:
        """Create the socket; with ``take_over`` (the new master of a hot
        upgrade), replace a live socket atomically instead of refusing it."""
        if len(os.fsencode(self.path)) > 90:
            raise ControlSocketError(
                f"control socket path {self.path!r} is too long for a UNIX socket "
                "(at most 90 bytes here: the limit is 107, less room for a temporary name)")
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ControlSocketError(
                f"cannot create control socket {self.path!r}: directory {directory!r} "
                "does not exist")
        # Only a directory nobody else can write makes the paths below safe
        # (the temporary name, chmod, rename, unlink): see safefs.
        fault = safefs.private_dir_fault(directory)
        if fault:
            raise ControlSocketError(f"control socket directory {directory!r} {fault}")
        if not take_over:
            self._remove_if_stale()
        elif os.path.lexists(self.path) and not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise ControlSocketError(
                f"control socket path {self.path!r} exists and is not a socket; "
                "refusing to replace it (remove it or choose another path)")
        # Bind under a temporary name and rename it into place: clients never
        # see a missing or half-made socket, and a takeover is atomic.
        bind_path = f"{self.path}.{os.getpid()}.tmp"
        if os.path.lexists(bind_path):
            os.unlink(bind_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Owner-only from the first instant: bind creates the file with the
        # umask applied, so no client can slip in before the chmod below.
        # (The manager is single-threaded: nothing else sees this umask.)
        old_umask = os.umask(0o177)
        try:
            listener.bind(bind_path)
        except OSError as exc:
            listener.close()
            raise ControlSocketError(
                f"cannot create control socket {self.path!r}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(bind_path, self.mode)
        if (self.uid, self.gid) != (os.geteuid(), os.getegid()):
            # a manager that kept root: `gunicorn-companion` run as Gunicorn's user reaches it
            os.chown(bind_path, self.uid, self.gid)
        os.rename(bind_path, self.path)
        listener.listen(64)
        listener.setblocking(False)
        self.listener = listener
        self.inode = os.stat(self.path).st_ino
        self.selector.register(listener, selectors.EVENT_READ, self._accept)

    def _remove_if_stale(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlSocketError(
                f"control socket path {self.path!r} exists and is not a socket; "
                "refusing to replace it (remove it or choose another path)")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except ConnectionRefusedError:
            # Nobody listens: left behind by a manager that died. Replace it.
            self.log.info("Replacing stale control socket %s", self.path)
            os.unlink(self.path)
            return
        except OSError as exc:
            raise ControlSocketError(
                f"cannot check control socket {self.path!r}: {exc.strerror}") from None
        finally:
            probe.close()
        raise ControlSocketError(
            f"control socket {self.path!r} is in use by another running process "
            "(another Gunicorn with companions?); refusing to replace it")

    # -- connections -------------------------------------------------------------------

    def _accept(self, key, mask) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The pending connection stays readable: stop listening
                    # until a connection closes, or the loop would spin.
                    self.log.error("Control socket cannot accept: %s; pausing until a "
                                   "connection closes", exc)
                    self.selector.unregister(self.listener)
                    self.accepting = False
                return
            sock.setblocking(False)
            conn = Connection(self, sock)
            self.connections.add(conn)
            refusal = self._refusal(sock)
            if refusal:
                conn.send(protocol.error(*refusal))
                conn.refused = True
            conn._settle()

    def resume_accepting(self) -> None:
        if not self.accepting and self.listener is not None and not self.accepting_blocked:
            self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
            self.accepting = True

    def _refusal(self, sock: socket.socket) -> tuple[str, str] | None:
        """Why this peer gets no service: (error code, message), or None."""
        if len(self.connections) > MAX_CONNECTIONS:
            return ("too_many_connections",
                    f"too many control connections (at most {MAX_CONNECTIONS}); try again later")
        try:
            pid, uid, gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        except (OSError, AttributeError):
            return None  # no SO_PEERCRED here: the socket's file mode is the guard
        if not self.peer_allowed(uid, gid, lambda: peer_groups(sock, pid)):
            who = "the owner or root"
            if self.mode & 0o060:
                who = f"the owner, root or group {self.gid}"
            return ("permission_denied",
                    f"permission denied: uid {uid} may not control this manager (only {who})")
        return None

    def peer_allowed(self, uid: int, gid: int, groups: Callable[[], set[int]]) -> bool:
        """Defence in depth behind the socket's file mode: the owner and root
        always, members of the socket's group (primary or supplementary, as
        the file mode counts them) only when the mode lets the group in, and
        nobody else, whatever the mode says about others."""
        if uid in (0, self.uid, os.geteuid()):
            return True
        if not self.mode & 0o060:
            return False
        return gid == self.gid or self.gid in groups()

    # -- shutdown ----------------------------------------------------------------------

    def close_in_child(self) -> None:
        """In a forked companion: drop the fds, leave the socket file alone."""
        for conn in list(self.connections):
            conn.sock.close()
        if self.listener is not None:
            self.listener.close()

    def close(self) -> None:
        self.accepting_blocked = True
        for conn in list(self.connections):
            if conn.output:  # best effort: replies settled by the shutdown itself
                try:
                    conn.sock.send(conn.output)
                except OSError:
                    pass
            conn.close()
        if self.listener is None:
            return
        if self.accepting:
            self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None
        # Unlink only the file we created: a successor may own the path by now.
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
