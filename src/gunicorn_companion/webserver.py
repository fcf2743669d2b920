"""The metrics endpoint's sockets, inside the manager's own loop.

No thread and no blocking call (the manager forks): the listener and each
connection are non-blocking sockets in the loop's selector; what the bytes
mean is httpwire.py, what the pages say is metrics.py. A hostile client
costs the loop nothing:

- a connection reads at most ``httpwire.MAX_HEAD`` bytes of request head (a
  10 MB header gets 431 after the first 8 KiB and the connection is closed);
- each connection has one deadline for its whole life, request and response
  (``CONNECTION_DEADLINE``): a client that trickles its request (slowloris)
  or does not read its response is closed when it passes, by the loop's
  timer (``next_deadline``/``fire_due``), not by polling;
- beyond ``MAX_CONNECTIONS`` open at once, a new connection is closed at once.

Why the manager binds the socket itself (with SO_REUSEADDR) and not the
master, as Gunicorn does with its listeners: a socket the master held would
be inherited by every HTTP worker, and a hot upgrade's new master (exec'd,
not forked) would find the port taken by its own parent. With SO_REUSEADDR a
replacement manager binds at once even while the dead one's connections sit
in TIME_WAIT; and the new manager of a hot upgrade, which finds the old
manager still listening, retries every second until the old one is gone
instead of failing its boot.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable

from . import httpwire, metrics, safefs
from .sampling import ProcSampler

MAX_CONNECTIONS = 64
CONNECTION_DEADLINE = 10.0  # seconds for a whole request and its response
TAKE_OVER_RETRY = 1.0


class MetricsBindError(Exception):
    """companion_metrics_bind cannot be bound; the message names the setting."""


class Connection:
    def __init__(self, server: "MetricsServer", sock: socket.socket, deadline: float):
        self.server = server
        self.sock = sock
        self.deadline = deadline
        self.head = bytearray()
        self.output = b""
        self.closed = False
        self.events = selectors.EVENT_READ
        server.selector.register(sock, self.events, self.on_event)

    def on_event(self, key, mask) -> None:
        if mask & selectors.EVENT_READ and not self.output:
            self._read()
        if self.output and not self.closed:
            self._write()

    def _read(self) -> None:
        # never more than one byte past the limit: enough to know it is too long
        room = httpwire.MAX_HEAD + 1 - len(self.head)
        try:
            data = self.sock.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()  # gone before finishing its request
            return
        self.head += data
        parsed = httpwire.parse_head(bytes(self.head))
        if parsed is None:
            return
        if isinstance(parsed, httpwire.Refusal):
            self.output = httpwire.refusal_response(parsed)
        else:
            try:
                self.output = self.server.answer(parsed)
            except Exception:  # a bug in a page must not take the manager down
                self.server.log.exception("Metrics page %s failed", parsed.path)
                self.output = httpwire.refusal_response(
                    httpwire.Refusal(500, "internal error; see the Gunicorn log"))
        self.head = bytearray()
        self.events = selectors.EVENT_WRITE
        self.server.selector.modify(self.sock, self.events, self.on_event)

    def _write(self) -> None:
        try:
            sent = self.sock.send(self.output)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.output = self.output[sent:]
        if not self.output:
            try:
                # the response is whole: say so, and let the kernel deliver it
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.selector.unregister(self.sock)
        self.sock.close()
        self.server.connections.discard(self)


class MetricsServer:
    """GET /metrics, / and /status.json, served from the manager's loop.

    ``snapshot()`` gives the supervisor's status entries; ``title`` heads the
    page (the proc_name)."""

    def __init__(self, address: httpwire.BindAddress, *, selector: selectors.BaseSelector,
                 snapshot: Callable[[], list[dict]], log, title: str,
                 manager_restarts: int = 0, now: Callable[[], float] = time.monotonic,
                 sampler: ProcSampler | None = None):
        self.address = address
        self.selector = selector
        self.snapshot = snapshot
        self.log = log
        self.title = title
        self.manager_restarts = manager_restarts
        self.now = now
        self.started_at = now()
        self.sampler = sampler or ProcSampler(now)
        self.listener: socket.socket | None = None
        self.connections: set[Connection] = set()
        self.deadlines: list[tuple[float, int, Connection]] = []
        self._seq = itertools.count()
        self.retry_at: float | None = None  # a hot upgrade waiting for the port
        self.waiting_for_port = False
        self.unix_inode: int | None = None

    # -- binding -----------------------------------------------------------------------

    def bind(self, take_over: bool = False) -> None:
        """Bind and listen, or raise MetricsBindError. With ``take_over`` (the
        new manager of a hot upgrade) a port still held by the old manager
        is retried every second instead."""
        try:
            self.listener = self._listen(take_over)
        except OSError as exc:
            if take_over and exc.errno == errno.EADDRINUSE:
                if not self.waiting_for_port:  # said once, not every second
                    self.log.warning("companion_metrics_bind %s is still in use (the old "
                                     "manager of a hot upgrade?); retrying every %.0f s",
                                     self.address.text, TAKE_OVER_RETRY)
                self.waiting_for_port = True
                self.retry_at = self.now() + TAKE_OVER_RETRY
                return
            raise MetricsBindError(
                f"companion_metrics_bind {self.address.text}: cannot listen: "
                f"{exc.strerror or exc}") from None
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        if self.waiting_for_port:
            self.log.info("Companion metrics at http://%s/metrics", self.bound_address)

    def _listen(self, take_over: bool) -> socket.socket:
        address = self.address
        if address.path is not None:
            self._clear_unix_path(take_over)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o117)  # 0o660 from the first instant
            try:
                sock.bind(address.path)
            except OSError:
                sock.close()
                raise
            finally:
                os.umask(old_umask)
            self.unix_inode = os.stat(address.path).st_ino
        else:
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            # a replacement manager binds while its predecessor's connections
            # are in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address.host, address.port))
            except OSError:
                sock.close()
                raise
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def _clear_unix_path(self, take_over: bool) -> None:
        path = self.address.path
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise MetricsBindError(f"companion_metrics_bind {self.address.text}: directory "
                                   f"{directory!r} does not exist")
        # as for the control socket: in a directory others can write, they
        # could swap the path under us (see safefs)
        fault = safefs.private_dir_fault(directory)
        if fault:
            raise MetricsBindError(f"companion_metrics_bind {self.address.text}: directory "
                                   f"{directory!r} {fault}")
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise MetricsBindError(f"companion_metrics_bind {self.address.text}: the path "
                                   "exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left by a manager that died
            return
        finally:
            probe.close()
        if not take_over:
            raise MetricsBindError(f"companion_metrics_bind {self.address.text}: in use by "
                                   "another running process")
        os.unlink(path)  # the old manager keeps serving on its fd until it exits

    @property
    def bound_address(self) -> str:
        if self.listener is None:
            return self.address.text
        if self.address.path is not None:
            return f"unix:{self.address.path}"
        host, port = self.listener.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- the loop's timers ---------------------------------------------------------------

    def next_deadline(self) -> float | None:
        while self.deadlines and self.deadlines[0][2].closed:
            heapq.heappop(self.deadlines)
        nearest = self.deadlines[0][0] if self.deadlines else None
        if self.retry_at is not None:
            nearest = self.retry_at if nearest is None else min(nearest, self.retry_at)
        return nearest

    def fire_due(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, conn = heapq.heappop(self.deadlines)
            conn.close()  # slow to send its request, or to read its response
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self.bind(take_over=True)

    # -- connections ---------------------------------------------------------------------

    def _accept(self, key, mask) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of fds: shed the oldest connection rather than spin
                    if self.deadlines:
                        heapq.heappop(self.deadlines)[2].close()
                        continue
                return
            if len(self.connections) >= MAX_CONNECTIONS:
                sock.close()  # over the cap: closed at once, costing nothing
                continue
            sock.setblocking(False)
            conn = Connection(self, sock, self.now() + CONNECTION_DEADLINE)
            self.connections.add(conn)
            heapq.heappush(self.deadlines, (conn.deadline, next(self._seq), conn))

    def answer(self, request: httpwire.Request) -> bytes:
        """The whole response to one request."""
        head_only = request.method == "HEAD"
        pages = {
            "/metrics": ("text/plain; version=0.0.4; charset=utf-8", metrics.exposition),
            "/": ("text/html; charset=utf-8", self._page),
            "/status.json": ("application/json", self._json),
        }
        if request.path not in pages:
            return httpwire.response(404, b"not found: try /, /metrics or /status.json\n",
                                     head_only=head_only)
        content_type, render = pages[request.path]
        entries = self.snapshot()
        figures, own = self.sampler.sample(entries)
        manager = metrics.ManagerFacts(os.getpid(), self.manager_restarts,
                                       round(self.now() - self.started_at, 3), own)
        body = render(entries, figures, manager)
        if isinstance(body, str):
            body = body.encode()
        return httpwire.response(200, body, content_type, head_only=head_only)

    def _page(self, entries, figures, manager) -> bytes:
        return metrics.status_page(entries, figures, manager, self.title)

    def _json(self, entries, figures, manager) -> bytes:
        return metrics.status_json(entries, figures, manager, self.title)

    # -- shutdown ------------------------------------------------------------------------

    def close_in_child(self) -> None:
        """In a forked companion: drop the fds, leave the socket file alone."""
        for conn in self.connections:
            conn.sock.close()
        if self.listener is not None:
            self.listener.close()

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        if self.listener is None:
            return
        self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None
        if self.address.path is not None:
            # only the file we created: a successor may own the path by now
            try:
                if os.stat(self.address.path).st_ino == self.unix_inode:
                    os.unlink(self.address.path)
            except OSError:
                pass
