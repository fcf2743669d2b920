"""Fleet singletons end to end: three real Gunicorn masters on one machine
stand in for three hosts, sharing one real lease service.

A sampler thread counts the live instances of the fleet singleton across
all hosts every 10 ms (each instance writes its pid into a shared
directory; live means running its own code and not stopped), and every test
checks that it never saw two. The faults are the issue's: SIGKILL and
SIGTERM of the holder's master, the holder's whole tree frozen past the TTL,
the service restarted empty, and the service gone for a while.

The tests take a ``lease_service`` fixture, parametrized by backend: a
backend adds a class to LEASE_SERVICES, made from a data directory, with
``url`` (what companion_lease_url is set to), ``start()`` (and start again
on the same address after a stop), ``stop()`` (a crash: SIGKILL),
``restart_empty()`` (a crash and a restart that lost the data) and
``hang(True/False)`` (the server stops answering, connections stay open).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from postgres_server import PostgresServer, find_bindir, missing_reason
from redis_server import RedisServer, find_redis_server
from support import (
    Control,
    Server,
    alive,
    cmdline,
    control_command,
    free_port,
    proc_stat,
    running_code,
    short_socket_path,
    status,
    wait_until,
)

pytest.importorskip("redis", reason="the redis client: pip install 'gunicorn-companion[redis]'")

TTL = 3.0
STOP_TIMEOUT = 0.5
NAME = "sched"


class RedisLeaseService:
    """A real redis-server without persistence: a restart loses every key."""

    def __init__(self, directory: Path):
        executable = find_redis_server()
        if executable is None:
            pytest.skip("redis-server is not on PATH: apt-get install redis-server")
        self.server = RedisServer(executable, directory)

    @property
    def url(self) -> str:
        return self.server.url + "/0"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(signal.SIGKILL)

    def restart_empty(self) -> None:
        """A crash and a restart that lost the data."""
        self.stop()
        self.start()

    def hang(self, hung: bool) -> None:
        """SIGSTOP (or SIGCONT): connections are accepted by the kernel but
        never answered, so calls time out instead of failing fast."""
        self.server.proc.send_signal(signal.SIGSTOP if hung else signal.SIGCONT)


class PostgresLeaseService:
    """A real PostgreSQL. Stopping it is a crash (its data is kept); a restart
    that loses the data is a cluster created anew on the same port."""

    def __init__(self, directory: Path):
        reason = missing_reason()
        if reason:
            pytest.skip(reason)
        # its own directory: the server runs as the postgres user, who cannot
        # enter pytest's (0700 root) temporary directories
        self.server = PostgresServer(find_bindir())

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.kill()

    def restart_empty(self) -> None:
        self.server.wipe()

    def hang(self, hung: bool) -> None:
        """SIGSTOP (or SIGCONT) the postmaster and every backend."""
        if hung:
            self.server.pause()
        else:
            self.server.resume()

    def close(self) -> None:
        self.server.remove()


LEASE_SERVICES = {"redis": RedisLeaseService, "postgresql": PostgresLeaseService}


@pytest.fixture(params=sorted(LEASE_SERVICES))
def lease_service(request, tmp_path):
    service = LEASE_SERVICES[request.param](tmp_path / f"{request.param}-data")
    (tmp_path / f"{request.param}-data").mkdir(exist_ok=True)
    service.start()
    yield service
    getattr(service, "close", service.stop)()


def live(pid: int) -> bool:
    """Running its own code: not gone, not exiting, not stopped (a frozen
    instance does no harm until it thaws; see test_frozen_holder)."""
    fields = proc_stat(pid)
    return running_code(pid) and fields is not None and fields[0] not in ("T", "t")


class FleetRun:
    """N hosts, the shared instance directory, and the sampler."""

    def __init__(self, root: Path, url: str, hosts: int = 3, metrics: bool = False):
        self.dir = root / "fleet"
        (self.dir / "instances").mkdir(parents=True)
        self.servers: list[Server] = []
        self.sockets = []
        self.configs: list[str] = []
        self.metrics_ports = [free_port() for _ in range(hosts)] if metrics else []
        for i in range(hosts):
            home = root / f"host{i}"
            home.mkdir()
            sock = short_socket_path(f"fleet{i}.sock")
            self.sockets.append(sock)
            companions = [{"name": NAME, "target": "compapp:fleet_member",
                           "singleton": "fleet", "stop_timeout": STOP_TIMEOUT,
                           "startsecs": 0}]
            config = "\n".join([
                "preload_app = True", "workers = 1",
                f"companion_control_socket = {str(sock)!r}",
                f"companion_lease_url = {url!r}",
                f"companion_lease_ttl = {TTL}",
                f"companion_workers = {companions!r}",
            ] + [f'companion_metrics_bind = "127.0.0.1:{port}"'
                 for port in self.metrics_ports[i:i + 1]]) + "\n"
            self.configs.append(config)
            self.servers.append(Server(home, config, env={"FLEET_DIR": str(self.dir),
                                                          "FLEET_HOST": str(i)}))
        self.samples: list[tuple[float, tuple[int, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> FleetRun:
        for server in self.servers:
            server.start()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for server in self.servers:
            server.cleanup()

    def instances(self) -> tuple[int, ...]:
        pids = []
        for entry in os.listdir(self.dir / "instances"):
            if live(int(entry)):
                pids.append(int(entry))
        return tuple(sorted(pids))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.instances()))
            time.sleep(0.01)

    def most_at_once(self, since: float = 0.0) -> int:
        return max((len(pids) for at, pids in self.samples if at >= since), default=0)

    def tokens(self) -> list[tuple[int, int, int]]:
        """(pid, token, host) of every instance started, in start order."""
        path = self.dir / "tokens"
        if not path.exists():
            return []
        return [tuple(int(w) for w in line.split()) for line in path.read_text().splitlines()]

    def one_instance(self, other_than: int | None = None, timeout: float = 30.0) -> int:
        def found():
            pids = [p for p in self.instances() if p != other_than]
            # an instance writes its pid file, then appends its token: wait
            # for both, or token_of/host_of can race it
            if len(pids) == 1 and any(p == pids[0] for p, _, _ in self.tokens()):
                return pids[0]
            return None
        return wait_until(found, timeout, message="one instance of the fleet singleton")

    def host_of(self, pid: int) -> int:
        return next(host for p, _, host in self.tokens() if p == pid)

    def token_of(self, pid: int) -> int:
        return next(token for p, token, _ in self.tokens() if p == pid)


@pytest.fixture
def fleet(tmp_path, lease_service):
    run = FleetRun(tmp_path, lease_service.url).start()
    try:
        yield run
    finally:
        run.close()
    assert run.most_at_once() <= 1 or getattr(run, "overlap_allowed", False), \
        "two instances ran at once"


def test_one_instance_across_the_fleet_and_status_names_the_holder(fleet):
    pid = fleet.one_instance()
    holder = fleet.host_of(pid)
    token = fleet.token_of(pid)
    assert token > 0
    entries = {i: status(sock)[NAME] for i, sock in enumerate(fleet.sockets)}
    assert entries[holder]["state"] == "RUNNING"
    assert entries[holder]["lease"]["state"] == "held"
    assert entries[holder]["lease"]["token"] == token
    assert 0 < entries[holder]["lease"]["expires_in"] <= TTL
    for i, entry in entries.items():
        if i == holder:
            continue
        # waiting hosts may need one poll to have seen the holder
        wait_until(lambda i=i: "fleet lease held by" in (status(fleet.sockets[i])[NAME]
                                                         .get("waiting") or ""),
                   10, message=f"host {i} naming the holder")
        entry = status(fleet.sockets[i])[NAME]
        assert entry["state"] == "STARTING" and entry["pid"] is None
        assert f"(token {token})" in entry["waiting"]
        assert entry["lease"]["state"] == "waiting"
        assert entry["lease"]["token"] == token
    # a few renewals later it is still the same single instance
    deadline = time.monotonic() + TTL * 1.5
    while time.monotonic() < deadline:
        assert fleet.instances() in ((pid,), ())
        time.sleep(0.05)
    assert fleet.instances() == (pid,)
    # a health probe passes on every host: the standbys are not failing
    for sock in fleet.sockets:
        probe = subprocess.run([*control_command(), "--socket", str(sock), "check"],
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, probe.stdout + probe.stderr


def test_sigkill_of_the_holders_master_fails_over(fleet):
    pid = fleet.one_instance()
    server = fleet.servers[fleet.host_of(pid)]
    killed_at = time.monotonic()
    server.signal(signal.SIGKILL)
    new = fleet.one_instance(other_than=pid, timeout=TTL + 5)
    took = time.monotonic() - killed_at
    assert took < TTL + 3, took
    assert fleet.token_of(new) > fleet.token_of(pid)


def test_sigterm_of_the_holder_hands_over_within_3s(fleet):
    pid = fleet.one_instance()
    server = fleet.servers[fleet.host_of(pid)]
    termed_at = time.monotonic()
    server.signal(signal.SIGTERM)
    new = fleet.one_instance(other_than=pid, timeout=10)
    took = time.monotonic() - termed_at
    assert took < 3.0, took
    assert fleet.token_of(new) > fleet.token_of(pid)
    server.wait_exit()


def test_frozen_holder_is_replaced_and_stops_on_waking(fleet):
    pid = fleet.one_instance()
    server = fleet.servers[fleet.host_of(pid)]
    tree = server.tree()
    for p in tree:
        os.kill(p, signal.SIGSTOP)
    new = fleet.one_instance(other_than=pid, timeout=TTL + 10)
    assert fleet.token_of(new) > fleet.token_of(pid)
    # the service let the lease expire, which it does no earlier than the
    # holder's own clock says: woken now, the holder finds its lease past
    fleet.overlap_allowed = True  # the thawed instance runs until its manager wakes
    thawed_at = time.monotonic()
    for p in tree:
        os.kill(p, signal.SIGCONT)
    wait_until(lambda: not running_code(pid), TTL / 3, interval=0.005,
               message="the thawed holder's instance gone within one renewal")
    gone_after = time.monotonic() - thawed_at
    assert gone_after < TTL / 3, gone_after
    assert fleet.most_at_once(since=thawed_at + TTL / 3) <= 1
    assert fleet.most_at_once(since=0) <= 2
    # it found its lease expired on waking; or, on a machine so loaded that
    # its renewals lagged, it had begun stopping just before the freeze
    assert "expired" in server.log() or "was not renewed" in server.log(), server.log()


def test_service_restarted_empty_tokens_still_grow(fleet, lease_service):
    pid = fleet.one_instance()
    old = fleet.token_of(pid)
    lease_service.restart_empty()
    # the holder's next renewal finds nothing: it stops, and whoever takes
    # the lease next waits out a lock-delay of one TTL before starting
    wait_until(lambda: not running_code(pid), TTL + 2, message="the old holder stopped")
    new = fleet.one_instance(other_than=pid, timeout=3 * TTL + 10)
    assert fleet.token_of(new) > old


def test_service_unreachable_holder_stops_in_time_and_nobody_starts(fleet, lease_service):
    pid = fleet.one_instance()
    lease_service.stop()
    stopped_at = time.monotonic()
    wait_until(lambda: not running_code(pid), TTL + 1, interval=0.005,
               message="the holder's instance gone before its lease can expire")
    assert time.monotonic() - stopped_at < TTL
    # no one starts while the service is away
    quiet_until = time.monotonic() + TTL
    while time.monotonic() < quiet_until:
        assert fleet.instances() == ()
        time.sleep(0.05)
    entries = [status(sock)[NAME] for sock in fleet.sockets]
    assert all(e["state"] == "STARTING" and e["pid"] is None for e in entries), entries
    assert all("cannot be asked" in (e.get("waiting") or "") for e in entries), entries
    lease_service.start()
    new = fleet.one_instance(timeout=3 * TTL + 10)
    assert fleet.token_of(new) > fleet.token_of(pid)


def test_stop_on_the_holder_hands_over_at_once(fleet):
    pid = fleet.one_instance()
    holder = fleet.host_of(pid)
    asked_at = time.monotonic()
    reply = Control(fleet.sockets[holder]).request({"cmd": "stop", "name": NAME})
    assert reply["ok"], reply
    new = fleet.one_instance(other_than=pid, timeout=10)
    assert time.monotonic() - asked_at < 3.0
    assert fleet.host_of(new) != holder
    entry = status(fleet.sockets[holder])[NAME]
    assert entry["state"] == "STOPPED"
    assert entry["lease"]["state"] == "waiting"


def test_a_killed_keeper_is_replaced_and_the_holder_keeps_running(fleet):
    pid = fleet.one_instance()
    server = fleet.servers[fleet.host_of(pid)]
    keepers = [p for p in server.tree() if "lease keeper" in cmdline(p)]
    assert len(keepers) == 1, [cmdline(p) for p in server.tree()]
    os.kill(keepers[0], signal.SIGKILL)
    server.until(lambda: [p for p in server.tree() if "lease keeper" in cmdline(p)
                          and p != keepers[0] and alive(p)], 10, message="a new keeper")
    # renewed by the new keeper: the same instance, the same token, past a TTL
    until = time.monotonic() + 1.5 * TTL
    while time.monotonic() < until:
        assert fleet.instances() == (pid,)
        time.sleep(0.05)
    lease = status(fleet.sockets[fleet.host_of(pid)])[NAME]["lease"]
    assert (lease["state"], lease["token"]) == ("held", fleet.token_of(pid))


def test_service_hung_holder_stops_in_time_and_nobody_starts(fleet, lease_service):
    pid = fleet.one_instance()
    lease_service.hang(True)
    hung_at = time.monotonic()
    try:
        wait_until(lambda: not running_code(pid), TTL + 1, interval=0.005,
                   message="the holder's instance gone before its lease can expire")
        assert time.monotonic() - hung_at < TTL
        quiet_until = time.monotonic() + TTL
        while time.monotonic() < quiet_until:
            assert fleet.instances() == ()
            time.sleep(0.05)
        entries = [status(sock)[NAME] for sock in fleet.sockets]
        assert all("cannot be asked" in (e.get("waiting") or "") for e in entries), entries
        assert all("Timeout" in e["lease"]["why"] for e in entries), entries
    finally:
        lease_service.hang(False)
    new = fleet.one_instance(timeout=3 * TTL + 10)
    assert fleet.token_of(new) >= fleet.token_of(pid)


def test_a_reread_that_removes_it_on_the_holder_hands_over_at_once(fleet):
    pid = fleet.one_instance()
    holder = fleet.host_of(pid)
    server = fleet.servers[holder]
    # the same settings without the fleet singleton: the URL must go too
    server.write_config("preload_app = True\nworkers = 1\n"
                        f"companion_control_socket = {str(fleet.sockets[holder])!r}\n"
                        "companion_workers = []\n")
    asked_at = time.monotonic()
    reply = Control(fleet.sockets[holder]).request({"cmd": "reread"})
    assert reply["ok"], reply
    new = fleet.one_instance(other_than=pid, timeout=10)
    assert time.monotonic() - asked_at < 3.0
    assert fleet.host_of(new) != holder


def lease_metrics(port: int) -> dict[str, float]:
    """The lease's samples on a host's /metrics, read with Prometheus' own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("gunicorn_companion_lease_")
            and sample.labels.get("companion") == NAME}


def test_metrics_show_which_host_holds_the_lease_and_its_token(tmp_path, lease_service):
    run = FleetRun(tmp_path, lease_service.url, metrics=True).start()
    try:
        pid = run.one_instance()
        holder, token = run.host_of(pid), run.token_of(pid)
        for i, port in enumerate(run.metrics_ports):
            expected = {"gunicorn_companion_lease_held": 1.0 if i == holder else 0.0,
                        "gunicorn_companion_lease_token": float(token)}
            # a standby may need one poll to have seen the holder's token
            wait_until(lambda port=port, expected=expected: lease_metrics(port) == expected,
                       10, message=f"host {i}'s lease metrics to be {expected}")
    finally:
        run.close()
    assert run.most_at_once() <= 1
