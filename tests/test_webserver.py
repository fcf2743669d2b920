"""The metrics server's and statsd sender's own sockets, driven directly in
this process: a real selector, real sockets, the test's own clock."""

import os
import selectors
import socket
import time
import types

from support import short_socket_path

from gunicorn_companion import httpwire, statsd
from gunicorn_companion.metrics import Figures
from gunicorn_companion.sampling import ProcSampler
from gunicorn_companion.webserver import TAKE_OVER_RETRY, MetricsServer


class Log:
    """Records what was logged (a value object, not a mock)."""

    def __init__(self):
        self.lines = []

    def warning(self, msg, *args):
        self.lines.append(msg % args)

    info = error = warning

    def exception(self, msg, *args):
        self.lines.append(msg % args)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_a_hot_upgrade_waits_for_the_old_manager_to_free_the_port():
    old = socket.socket()
    old.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    old.bind(("127.0.0.1", 0))
    old.listen()
    port = old.getsockname()[1]
    selector, log, clock = selectors.DefaultSelector(), Log(), Clock()
    server = MetricsServer(httpwire.parse_bind(f"127.0.0.1:{port}"), selector=selector,
                           snapshot=list, log=log, title="t", now=clock)
    try:
        server.bind(take_over=True)  # the old manager still listens: no boot error
        assert server.listener is None
        assert server.next_deadline() == clock.t + TAKE_OVER_RETRY
        assert "still in use" in log.lines[0]
        clock.t += TAKE_OVER_RETRY
        server.fire_due(clock.t)  # still held: retried again later
        assert server.listener is None and server.next_deadline() == clock.t + TAKE_OVER_RETRY
        assert len(log.lines) == 1  # said once, not every second
        old.close()
        clock.t += TAKE_OVER_RETRY
        server.fire_due(clock.t)
        assert server.listener is not None
        assert server.next_deadline() is None
        assert log.lines[-1] == f"Companion metrics at http://127.0.0.1:{port}/metrics"
    finally:
        server.close()
        selector.close()
        old.close()


def _serve_one(server, selector, request: bytes) -> bytes:
    """Run the server's part of the loop until one client has its whole answer."""
    host, port = server.listener.getsockname()[:2]
    with socket.create_connection((host, port), timeout=5) as client:
        client.sendall(request)
        client.setblocking(False)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for key, mask in selector.select(0.05):
                key.data(key, mask)
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return data
            data += chunk
    raise AssertionError(f"no whole answer within 10 s: {data!r}")


def test_a_page_that_fails_answers_500_and_the_server_goes_on():
    calls = []

    def snapshot():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return []

    selector, log = selectors.DefaultSelector(), Log()
    server = MetricsServer(httpwire.parse_bind("127.0.0.1:0"), selector=selector,
                           snapshot=snapshot, log=log, title="t")
    server.bind()
    try:
        first = _serve_one(server, selector, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), first
        assert log.lines == ["Metrics page /metrics failed"]
        second = _serve_one(server, selector, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        server.close()
        selector.close()


def test_statsd_send_failures_are_counted_and_logged_once():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    # nobody listens there now: the kernel refuses the datagrams (ECONNREFUSED)
    log, clock = Log(), Clock()
    cfg = types.SimpleNamespace(statsd_host=("127.0.0.1", port), statsd_prefix="p",
                                dogstatsd_tags="")
    sender = statsd.StatsdSender(cfg, snapshot=lambda: [{"name": "a", "state": "RUNNING",
                                                         "pid": None, "restarts": 0}],
                                 log=log, now=clock, interval=1.0)
    try:
        for _ in range(5):
            sender.fire_due(clock.t)
            clock.t += 1.0
        assert sender.errors > 0
        assert len(log.lines) == 1 and "Cannot send companion metrics to statsd" in log.lines[0]
    finally:
        sender.close()


def test_statsd_over_a_unix_datagram_socket():
    path = short_socket_path("statsd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        cfg = types.SimpleNamespace(statsd_host=str(path), statsd_prefix="app",
                                    dogstatsd_tags="env:x")
        clock = Clock()
        sender = statsd.StatsdSender(cfg, snapshot=lambda: [{"name": "w", "state": "FATAL",
                                                             "pid": None, "restarts": 4}],
                                     log=Log(), now=clock, interval=1.0)
        sender.fire_due(clock.t)
        got = [receiver.recv(1024) for _ in range(3)]
        sender.close()
    path.unlink()
    path.parent.rmdir()
    assert got == [b"app.companion.w.state:200|g|#env:x", b"app.companion.w.up:0|g|#env:x",
                   b"app.companion.w.restarts:4|c|@1.0|#env:x"]


def test_proc_reading_is_bounded_and_reaches_every_companion_in_turn():
    entries = [{"name": f"c{i}", "pid": 100 + i} for i in range(10)] + [
        {"name": "down", "pid": None}]
    real = Clock()
    reads = []

    def read(pid):
        reads.append(pid)
        real.t += 0.02  # each read costs 20 ms of real time
        return Figures(rss=pid, pss=0, uss=0, cpu_seconds=0.0)

    scraped = Clock()
    sampler = ProcSampler(scraped, read=read, clock=real, budget=0.05)
    seen = []
    for _ in range(4):
        reads.clear()
        figures, _ = sampler.sample(entries)
        seen.append(sorted(figures))
        # within the budget: the read that crosses it is the last
        assert len([p for p in reads if p != os.getpid()]) <= 3
        scraped.t += 1.0
    assert seen[0] == ["c0", "c1", "c2"]
    assert seen[-1] == sorted(f"c{i}" for i in range(10))
    # asked again within a second of the last: nothing is read
    scraped.t -= 0.5
    reads.clear()
    sampler.sample(entries)
    assert reads == []
    # a restarted companion's old figures are not shown for its new pid
    scraped.t += 1.0
    entries[0] = {"name": "c0", "pid": 999}
    figures, _ = sampler.sample(entries)
    assert figures["c0"].rss == 999  # never read: first in line


def test_a_client_that_does_not_read_its_response_is_dropped_at_its_deadline():
    # a /metrics far bigger than the socket buffers: it cannot all be written
    entries = [{"name": f"c{i}", "state": "RUNNING", "pid": None, "uptime": 1.0,
                "restarts": 0, "last_exit": None, "stdout": None, "stderr": None}
               for i in range(15000)]
    selector, clock = selectors.DefaultSelector(), Clock()
    server = MetricsServer(httpwire.parse_bind("127.0.0.1:0"), selector=selector,
                           snapshot=lambda: entries, log=Log(), title="t", now=clock)
    server.bind()
    try:
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(server.listener.getsockname())
            client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            deadline = time.monotonic() + 10
            while not any(conn.output for conn in server.connections):
                assert time.monotonic() < deadline, "the response was never started"
                for key, mask in selector.select(0.05):
                    key.data(key, mask)
            for _ in range(5):  # the loop goes on; the client still reads nothing
                for key, mask in selector.select(0.01):
                    key.data(key, mask)
            (conn,) = server.connections
            assert conn.output  # the rest waits for a reader that never comes
            assert server.next_deadline() == conn.deadline
            clock.t = conn.deadline
            server.fire_due(clock.t)
            assert server.connections == set()
            assert server.next_deadline() is None
    finally:
        server.close()
        selector.close()
