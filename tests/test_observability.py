"""The metrics endpoint and statsd against a real Gunicorn: real sockets,
real hostile clients, a real UDP statsd the test reads."""

import os
import re
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Control,
    alive,
    children,
    cmdline,
    control_config,
    free_port,
    smaps_rollup,
    wait_until,
)

from gunicorn_companion import webserver

COMPANIONS = """[
    {"name": "sleepy", "target": "compapp:sleeper", "startsecs": 0},
    {"name": "ticker", "target": "compapp:crasher", "startsecs": 0, "restart_delay": 0.05},
]"""


def http(address, request: bytes, timeout=10.0) -> bytes:
    """One request, the whole response (the server closes after it)."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(address, path="/metrics") -> tuple[int, bytes]:
    data = http(address, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def samples(address) -> dict:
    status, body = get(address)
    assert status == 200, body
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def metric(address, name, **labels):
    return samples(address).get(("gunicorn_companion_" + name, frozenset(labels.items())))


@pytest.fixture
def metrics_server(server, sock_path):
    """A server with a control socket and the metrics endpoint on a free port."""
    port = free_port()
    srv = server(control_config(sock_path, COMPANIONS,
                                f'companion_metrics_bind = "127.0.0.1:{port}"'))
    srv.wait_starts("sleepy")
    srv.wait_log("Companion metrics at http://127.0.0.1:")
    srv.metrics = ("127.0.0.1", port)
    srv.sock_path = sock_path
    return srv


def test_metrics_show_every_companion_and_follow_restarts(metrics_server):
    address = metrics_server.metrics
    assert metric(address, "up", companion="sleepy") == 1
    assert metric(address, "state", companion="sleepy", state="RUNNING") == 1
    assert metric(address, "memory_bytes", companion="sleepy", kind="rss") > 1_000_000
    first = metric(address, "restarts_total", companion="ticker")
    metrics_server.until(lambda: metric(address, "restarts_total", companion="ticker") > first,
                         message="ticker's restarts to grow in /metrics")
    assert metric(address, "last_exit_code", companion="ticker") == 3
    assert metric(address, "manager_restarts_total") == 0
    assert metric(address, "manager_memory_bytes", kind="pss") > 0
    status, body = get(address, "/nope")
    assert status == 404
    assert http(address, b"HEAD /metrics HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\n")
    assert http(address, b"DELETE / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")


def test_a_replaced_manager_binds_again_and_counts_its_restart(metrics_server):
    address = metrics_server.metrics
    for _ in range(5):  # leave connections in TIME_WAIT on the manager's side
        get(address)
    old = metrics_server.wait_manager()
    os.kill(old, signal.SIGKILL)
    metrics_server.wait_manager(other_than=old)
    metrics_server.wait_log("Companion metrics at http://127.0.0.1:", count=2)
    assert metric(address, "manager_restarts_total") == 1


@pytest.mark.parametrize("bind, message", [
    ("9191", "expected host:port, [ipv6]:port or unix:/path, got '9191'"),
    ("127.0.0.1:http", "the port must be a number from 0 to 65535, got '127.0.0.1:http'"),
    ("unix:relative", "unix: needs an absolute path, got 'unix:relative'"),
])
def test_a_malformed_bind_address_stops_the_boot_naming_the_setting(server, sock_path,
                                                                     bind, message):
    srv = server(control_config(sock_path, COMPANIONS, f"companion_metrics_bind = {bind!r}"))
    srv.watch_exit = False
    assert srv.wait_exit() != 0
    assert f"Invalid value for companion_metrics_bind: {bind}" in srv.log()
    assert message in srv.log()
    assert srv.starts("sleepy") == []


def test_a_bind_address_in_use_stops_the_boot_and_starts_nothing(server, sock_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = server(control_config(sock_path, COMPANIONS,
                                    f'companion_metrics_bind = "127.0.0.1:{port}"'))
        srv.watch_exit = False
        assert srv.wait_exit() != 0
    assert (f"companion_metrics_bind 127.0.0.1:{port}: cannot listen: Address already in use"
            in srv.log())
    assert srv.starts("sleepy") == []
    assert srv.tree() == []


def test_unix_socket_bind(server, sock_path):
    path = str(sock_path.parent / "m.sock")
    srv = server(control_config(sock_path, COMPANIONS, f'companion_metrics_bind = "unix:{path}"'))
    srv.wait_starts("sleepy")
    srv.wait_log(f"Companion metrics at http://unix:{path}/metrics")
    status, body = get(path, "/status.json")
    assert status == 200 and b'"sleepy"' in body
    assert os.stat(path).st_mode & 0o777 == 0o660
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    assert not os.path.exists(path)  # removed by the manager that made it


def test_a_unix_socket_in_a_directory_others_can_write_stops_the_boot(server, sock_path):
    srv = server(control_config(sock_path, COMPANIONS,
                                'companion_metrics_bind = "unix:/tmp/metrics-x.sock"'))
    srv.watch_exit = False
    assert srv.wait_exit() != 0
    assert "companion_metrics_bind unix:/tmp/metrics-x.sock: directory '/tmp' " in srv.log()
    assert srv.starts("sleepy") == []


def _status_took(sock_path) -> float:
    started = time.monotonic()
    reply = Control(sock_path).request({"cmd": "status"})
    assert reply["ok"]
    return time.monotonic() - started


def test_hostile_http_clients_cost_the_loop_nothing(metrics_server, measured):
    address, sock_path = metrics_server.metrics, metrics_server.sock_path
    manager = metrics_server.wait_manager()
    rss_before = smaps_rollup(manager)["Rss"]
    # slowloris: many connections, each trickling its request head
    loris = []
    for _ in range(20):
        s = socket.create_connection(address, timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\n")
        loris.append(s)
    opened = time.monotonic()
    # a 10 MB header, sent in 64 KiB pieces while the control socket is
    # asked for status between them: refused after the first 8 KiB, never
    # buffered, and the manager answers status all along
    huge = socket.create_connection(address, timeout=10)
    huge.setblocking(False)
    payload = memoryview(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (10 * 1024 * 1024)
                         + b"\r\n\r\n")
    sent, refused, worst, turns = 0, False, 0.0, 0
    while not refused and sent < len(payload):
        try:
            sent += huge.send(payload[sent:sent + 65536])
        except BlockingIOError:
            pass
        except OSError:
            refused = True  # reset: the manager closed it after its 431
        loris[turns % len(loris)].send(b"X")  # the slowloris trickle on
        worst = max(worst, _status_took(sock_path))
        turns += 1
    huge.setblocking(True)
    answer = b""
    try:
        answer = huge.recv(65536)
    except OSError:
        pass
    huge.close()
    assert refused or answer.startswith(b"HTTP/1.1 431 "), (sent, answer[:100])
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    for s in loris:
        s.send(b"X")  # a trickle
        worst = max(worst, _status_took(sock_path))
    measured("control status while 20 slowloris clients trickle and a 10 MB header is sent",
             worst)
    assert worst < 5, f"status took {worst:.2f}s during a slowloris"
    assert get(address)[0] == 200  # scrapes go on
    assert smaps_rollup(manager)["Rss"] - rss_before < 4 * 1024  # kB: never the 10 MB

    def all_closed():
        for s in loris:
            s.settimeout(0.01)
            try:
                if s.recv(1) != b"":
                    return False
            except TimeoutError:
                return False
            except OSError:
                pass
        return True

    wait_until(all_closed, webserver.CONNECTION_DEADLINE + 15,
               message="the slowloris connections to be closed at their deadline")
    closed_after = time.monotonic() - opened
    measured("slowloris connections closed after", closed_after)
    assert closed_after >= webserver.CONNECTION_DEADLINE - 1
    for s in loris:
        s.close()


def test_connections_beyond_the_cap_are_closed_at_once(metrics_server):
    address, sock_path = metrics_server.metrics, metrics_server.sock_path
    idle = [socket.create_connection(address, timeout=5)
            for _ in range(webserver.MAX_CONNECTIONS)]
    try:
        # the manager accepts them in its own time: wait until it holds them all
        def refused():
            with socket.create_connection(address, timeout=5) as extra:
                extra.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                try:
                    return extra.recv(100) == b""
                except ConnectionResetError:
                    return True
        wait_until(refused, 15, message="a connection over the cap to be closed at once")
        assert _status_took(sock_path) < 5
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: get(address)[0] == 200, 15, message="scrapes to work again")


def datagrams(sock: socket.socket) -> list[bytes]:
    """What has arrived so far (datagrams keep coming: read what is there)."""
    sock.settimeout(0.05)
    got = []
    try:
        for _ in range(1000):
            got.append(sock.recv(65536))
    except TimeoutError:
        pass
    return got


def test_statsd_gets_companion_gauges_and_counters(server, sock_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(0.5)
        port = statsd.getsockname()[1]
        srv = server(control_config(sock_path, COMPANIONS, "\n".join([
            f'statsd_host = "127.0.0.1:{port}"',
            'statsd_prefix = "myapp"',
            'dogstatsd_tags = "env:test"',
            "companion_statsd_interval = 0.2",
        ])))
        received: list[bytes] = []

        def heard(*wanted):
            received.extend(datagrams(statsd))
            return all(any(re.fullmatch(w, d) for d in received) for w in wanted)

        srv.until(lambda: heard(rb"myapp\.companion\.sleepy\.state:20\|g\|#env:test",
                                rb"myapp\.companion\.sleepy\.up:1\|g\|#env:test",
                                rb"myapp\.companion\.ticker\.restarts:\d+\|c\|@1\.0\|#env:test"),
                  message="the companions' statsd metrics")
        assert any(d.startswith(b"myapp.companion.sleepy.memory.pss:") for d in received)
    # statsd gone: its datagrams are lost (a refused send is logged once), nothing stops
    time_passes = len(srv.starts("ticker")) + 3
    srv.wait_starts("ticker", time_passes)
    assert Control(sock_path).request({"cmd": "status"})["ok"]


def test_a_state_change_reaches_statsd_at_once_not_at_the_next_interval(server, sock_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        port = statsd.getsockname()[1]
        srv = server(control_config(sock_path, COMPANIONS, "\n".join([
            f'statsd_host = "127.0.0.1:{port}"',
            "companion_statsd_interval = 3600",  # one send at boot, then none for an hour
        ])))
        srv.wait_starts("sleepy")
        assert Control(sock_path).request({"cmd": "stop", "name": "sleepy"})["ok"]
        received: list[bytes] = []

        def heard_stopped():
            received.extend(datagrams(statsd))
            return b"companion.sleepy.state:0|g" in received  # STOPPED

        srv.until(heard_stopped, message="sleepy's STOPPED gauge")
        assert b"companion.sleepy.up:0|g" in received


def test_nothing_is_bound_when_the_setting_is_off(server, sock_path):
    srv = server(control_config(sock_path, COMPANIONS))
    srv.wait_starts("sleepy")
    manager = srv.wait_manager()
    inodes = set()
    for fd in os.listdir(f"/proc/{manager}/fd"):
        try:
            target = os.readlink(f"/proc/{manager}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening_tcp = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    listening_tcp.append(line)
    assert listening_tcp == []
    assert alive(manager)


def test_a_hot_upgrade_hands_the_metrics_port_to_the_new_manager(metrics_server):
    srv, address = metrics_server, metrics_server.metrics
    srv.watch_exit = False  # the first master exits on purpose
    master = srv.pid
    os.kill(master, signal.SIGUSR2)
    new_master = srv.until(
        lambda: next((p for p in children(master) if "master" in cmdline(p)), None),
        message="the new master")
    # the new manager boots (no boot error) and waits for the port
    srv.wait_log("is still in use (the old manager of a hot upgrade?); retrying every 1 s")
    os.kill(master, signal.SIGTERM)
    try:
        srv.wait_log("Companion metrics at http://127.0.0.1:", count=2)
        wait_until(lambda: not alive(master), message="the old master to exit")
        assert metric(address, "up", companion="sleepy") == 1
        assert srv.log().count("is still in use") == 1  # said once, not every second
    finally:
        os.kill(new_master, signal.SIGTERM)
        wait_until(lambda: not alive(new_master), message="the new master to exit")
