"""systemd's notify protocol, spoken to a real datagram socket as systemd
listens: READY=1 only once HTTP workers and companions are up, STATUS= as the
companions change, RELOADING=1 then READY=1 on HUP, WATCHDOG=1 keep-alives;
every message from the master, the unit's main process."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import pytest
from support import short_socket_path, wait_until

from gunicorn_companion import sdnotify


class FakeSystemd:
    """The listening end of NOTIFY_SOCKET, with the sender's pid of each message."""

    def __init__(self):
        self.path = short_socket_path("notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self.messages: list[tuple[int, float, str]] = []  # (sender pid, when, text)

    def receive(self) -> list[tuple[int, float, str]]:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return self.messages
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            self.messages.append((pid, time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [text for _, _, text in self.receive()]

    def close(self):
        self.sock.close()
        self.path.unlink()
        os.rmdir(self.path.parent)


@pytest.fixture
def systemd():
    listener = FakeSystemd()
    yield listener
    listener.close()


def test_ready_waits_for_companions_to_settle_and_a_fatal_one_does_not_block_it(
        server, systemd):
    srv = server("""
        workers = 2
        companion_workers = [
            {"name": "slow", "target": "compapp:sleeper", "startsecs": 1.5},
            {"name": "broken", "target": "compapp:crasher", "startsecs": 5,
             "restart_delay": 0.05, "startretries": 2},
        ]
        """, env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"})
    wait_until(lambda: "READY=1" in systemd.texts(), message="READY=1")
    texts = systemd.texts()
    ready_at = texts.index("READY=1")
    # Gunicorn's own early READY=1 was never sent: just ours, once
    assert texts.count("READY=1") == 1
    statuses = [t for t in texts[:ready_at] if t.startswith("STATUS=")]
    assert statuses[-1] == "STATUS=1/2 companions RUNNING; broken FATAL", texts
    assert "STATUS=0/2 companions RUNNING; slow STARTING; broken STARTING" in statuses
    assert "giving up (FATAL)" in srv.log()
    # keep-alives keep coming, every half period or so
    count = texts.count("WATCHDOG=1")
    wait_until(lambda: systemd.texts().count("WATCHDOG=1") >= count + 3,
               message="more WATCHDOG=1")
    # every message from the master, systemd's main pid (NotifyAccess=main)
    assert {pid for pid, _, _ in systemd.receive()} == {srv.pid}

    # HUP: RELOADING=1 with its MONOTONIC_USEC, then READY=1 again
    srv.signal(signal.SIGHUP)
    wait_until(lambda: systemd.texts().count("READY=1") == 2, message="READY=1 after HUP")
    after = systemd.texts()[ready_at + 1:]
    reloading = [t for t in after if t.startswith("RELOADING=1")]
    assert len(reloading) == 1 and reloading[0].split("\n")[1].startswith("MONOTONIC_USEC=")
    assert after.index(reloading[0]) < after.index("READY=1")


def test_watchdog_stops_when_the_managers_loop_stops(server, systemd):
    srv = server("""
        workers = 1
        companion_workers = [{"name": "slow", "target": "compapp:sleeper", "startsecs": 0}]
        """, env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "600000"})
    wait_until(lambda: systemd.texts().count("WATCHDOG=1") >= 2, message="WATCHDOG=1")
    manager = srv.wait_manager()
    os.kill(manager, signal.SIGSTOP)  # its loop no longer turns; the master's does
    try:
        stopped_at = time.monotonic()
        # one period after its last word the master stops vouching for it
        wait_until(lambda: time.monotonic() - stopped_at > 2.0, message="two seconds")
        late = [when for _, when, text in systemd.receive()
                if text == "WATCHDOG=1" and when > stopped_at + 1.0]
        assert late == []
    finally:
        os.kill(manager, signal.SIGCONT)
    count = systemd.texts().count("WATCHDOG=1")
    wait_until(lambda: systemd.texts().count("WATCHDOG=1") > count, message="WATCHDOG=1 again")


def test_without_companions_ready_comes_with_the_workers(server, systemd):
    server("workers = 1\n", env={"NOTIFY_SOCKET": str(systemd.path)})
    wait_until(lambda: "READY=1" in systemd.texts(), message="READY=1")


# -- pure ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "pid", "address", "period"),
    [
        ({}, 7, None, None),
        ({"NOTIFY_SOCKET": "/run/n"}, 7, "/run/n", None),
        ({"NOTIFY_SOCKET": "@abstract"}, 7, "\0abstract", None),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "3000000"}, 7, "/n", 3.0),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "8"}, 7, "/n", None),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "7"}, 7, "/n", 3.0),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "x"}, 7, "/n", None),
    ],
)
def test_take_from_environ(environ, pid, address, period):
    environ = dict(environ)
    assert sdnotify.take_from_environ(environ, pid) == (address, period)
    assert environ == {}  # nobody forked later inherits them


@pytest.mark.parametrize(
    ("companions", "text", "is_settled"),
    [
        ([], "0/0 companions RUNNING", True),
        ([("a", "RUNNING", True)], "1/1 companion RUNNING", True),
        ([("a", "RUNNING", True), ("b", "BACKOFF", True)],
         "1/2 companions RUNNING; b BACKOFF", False),
        ([("a", "FATAL", True), ("b", "STOPPED", False)], "0/1 companion RUNNING; a FATAL", True),
        ([("a", "STARTING", True)], "0/1 companion RUNNING; a STARTING", False),
        ([(f"c{i}", "BACKOFF", True) for i in range(7)],
         "0/7 companions RUNNING; c0 BACKOFF; c1 BACKOFF; c2 BACKOFF; c3 BACKOFF; c4 BACKOFF; "
         "2 more", False),
    ],
)
def test_summary_and_settled(companions, text, is_settled):
    assert sdnotify.summary(companions) == text
    assert sdnotify.settled(companions) is is_settled


def test_parse_news_keeps_a_partial_line():
    assert sdnotify.parse_news(b"status 1/1\nsettled\nali") == (["status 1/1", "settled"],
                                                                 b"ali")
