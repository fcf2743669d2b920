"""Real network partitions between three hosts and the lease service.

Part 1, at the lease level:

The service (PostgreSQL or redis-server) runs in its own network namespace;
each host is a namespace of its own, joined to the service's by a veth pair
(tests/netns.py). Here each host runs the lease loop in miniature
(tests/lease_holder.py), which keeps the holder's deadline by its own
monotonic clock the way a companion manager does and logs every grant,
start, renewal and stop. Then the holder's link is cut (calls fail fast) or
its packets silently dropped (calls hang until their timeout), the partition
is healed, and the logs of all hosts, on the machine's one monotonic clock,
must show that:

- the old holder stopped its instance before its own deadline,
- nobody was granted the lease before that deadline, and two instances never
  ran at once,
- the tokens grew, and the fleet settled on one instance after the heal.

Part 2, end to end: the same faults with a real Gunicorn master (and its
companion manager and keeper) inside each host's namespace, the fleet
singleton's live instances sampled every 10 ms across all hosts
(test_fleet.FleetRun): never two at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lease_holder import read_log, running, tenures, violations
from netns import SERVICE_ADDRESS, network
from postgres_server import PostgresServer, find_bindir, missing_reason
from redis_server import RedisServer, find_redis_server
from support import status, wait_until

from gunicorn_companion.keeper import call_timeout

TTL = 3.0
TIMEOUT = call_timeout(TTL)
NAME = "sched"
HOLDER = str(Path(__file__).with_name("lease_holder.py"))


def start_service(backend: str, net, tmp_path: Path, request):
    """The service inside the service namespace; its URL there."""
    svc = net.service
    if backend == "postgresql":
        reason = missing_reason()
        if reason:
            pytest.skip(reason)
        server = PostgresServer(find_bindir(), host=SERVICE_ADDRESS, port=5432,
                                prefix=svc.prefix, enter=svc.call)
        request.addfinalizer(server.remove)
        server.start()
        return server.url
    executable = find_redis_server()
    if executable is None:
        pytest.skip("redis-server is not on PATH: apt-get install redis-server")
    pytest.importorskip("redis", reason="pip install -e '.[redis]'")
    server = RedisServer(executable, tmp_path, host=SERVICE_ADDRESS, prefix=svc.prefix,
                         enter=svc.call)
    server.port = 6379  # the namespace is ours: any port is free there
    request.addfinalizer(server.stop)
    server.start()
    return server.url + "/0"


class Fleet:
    """One lease_holder per host namespace, and their logs."""

    def __init__(self, net, url: str, tmp_path: Path):
        self.net = net
        self.logs = [str(tmp_path / f"host{i}.log") for i in range(len(net.hosts))]
        self.procs = [
            host.popen([sys.executable, HOLDER, url, NAME, f"host{i}:{i}", str(TTL),
                        str(TIMEOUT), self.logs[i]],
                       stdin=subprocess.DEVNULL, stderr=open(tmp_path / f"host{i}.err", "w"))
            for i, host in enumerate(net.hosts)
        ]

    def events(self):
        return [e for i, path in enumerate(self.logs) for e in read_log(path, f"host{i}")]

    def running(self):
        return running(self.events())

    def the_holder(self, timeout: float = 30.0) -> int:
        """The host whose instance runs, once exactly one does."""
        def one():
            now = self.running()
            return now[0] if len(now) == 1 else None
        tenure = wait_until(one, timeout, interval=0.02, message="one running instance")
        return int(tenure.owner.removeprefix("host"))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(params=["postgresql", "redis"])
def fleet(request, tmp_path):
    net = network(request)
    url = start_service(request.param, net, tmp_path, request)
    run = Fleet(net, url, tmp_path)
    request.addfinalizer(run.close)
    return run


def partition_and_heal(fleet, fault) -> None:
    net = fleet.net
    old = fleet.the_holder()
    old_tenure = fleet.running()[0]
    faulted_at = time.monotonic()
    fault(old)

    def someone_else():
        return [t for t in fleet.running() if t.owner != f"host{old}"] or None

    # The old lease runs out TTL after its last renewal, at most TTL after
    # the fault; a waiter asks every TTL/6; the rest is a loaded machine.
    new = wait_until(someone_else, TTL + 15, interval=0.02, message="a takeover")[0]
    assert new.token > old_tenure.token
    assert new.granted - faulted_at <= TTL + 10
    stopped = [t for t in tenures(fleet.events())
               if (t.owner, t.token) == (old_tenure.owner, old_tenure.token)][0]
    assert stopped.stop is not None, "the cut-off holder still runs its instance"
    assert stopped.stop <= stopped.deadline <= new.granted

    net.heal(old)
    healed_at = time.monotonic()

    def old_host_sees_the_holder():
        return [e for e in fleet.events() if e.owner == f"host{old}" and e.kind == "busy"
                and e.at > healed_at and e.token == new.token]

    wait_until(old_host_sees_the_holder, 30, interval=0.02,
               message="the healed host to see the new holder")
    assert [t.owner for t in fleet.running()] == [new.owner]
    fleet.close()
    assert violations(fleet.events()) == []


def test_a_holder_whose_link_goes_down_stops_in_time_and_the_fleet_settles(fleet):
    partition_and_heal(fleet, fleet.net.cut)


def test_a_holder_whose_packets_are_silently_dropped_stops_in_time_and_the_fleet_settles(
        fleet):
    partition_and_heal(fleet, fleet.net.drop)


def test_the_fleet_without_faults_keeps_one_instance_and_hands_over_on_sigterm(fleet):
    holder = fleet.the_holder()
    began = time.monotonic()
    fleet.procs[holder].send_signal(signal.SIGTERM)
    fleet.procs[holder].wait(15)

    def someone_else():
        return [t for t in fleet.running() if t.owner != f"host{holder}"] or None

    new = wait_until(someone_else, 15, interval=0.02, message="a handoff")[0]
    # released at once: a waiter asks every TTL/6, well under the TTL
    assert new.start - began < TTL
    fleet.close()
    assert violations(fleet.events()) == []


# -- Part 2: real Gunicorn masters in the namespaces ------------------------------


@pytest.fixture(params=["postgresql", "redis"])
def masters(request, tmp_path):
    from test_fleet import FleetRun

    net = network(request)
    url = start_service(request.param, net, tmp_path, request)
    run = FleetRun(tmp_path, url)
    for host, server in zip(net.hosts, run.servers, strict=True):
        # ip netns exec execs the master in place: its pid is the master's
        server.argv = [*host.prefix, *server.argv]
    run.net = net
    run.start()
    request.addfinalizer(run.close)
    return run


def masters_partition_and_heal(run, fault) -> None:
    # test_fleet needs the redis client (it skips without it): imported here,
    # so that Part 1 runs on PostgreSQL without it
    from test_fleet import STOP_TIMEOUT, TTL, live

    pid = run.one_instance()
    old = run.host_of(pid)
    faulted_at = time.monotonic()
    fault(old)
    # The old holder's manager stops its instance before its lease can expire
    # by its own clock: at most TTL after its last renewal, before the fault.
    wait_until(lambda: not live(pid), TTL + 2, interval=0.005,
               message="the cut-off holder's instance gone")
    assert time.monotonic() - faulted_at < TTL + STOP_TIMEOUT + 1
    new = run.one_instance(other_than=pid, timeout=TTL + 15)
    assert run.host_of(new) != old
    assert run.token_of(new) > run.token_of(pid)
    run.net.heal(old)
    # The healed host asks the service again and waits behind the new holder.
    token = run.token_of(new)
    wait_until(lambda: f"(token {token})" in (status(run.sockets[old])[NAME].get("waiting")
                                              or ""),
               30, message="the healed host to name the new holder")
    assert run.instances() == (new,)
    assert run.most_at_once() <= 1, "two instances ran at once"


def test_masters_a_holder_whose_link_goes_down_is_replaced_and_the_fleet_settles(masters):
    masters_partition_and_heal(masters, masters.net.cut)


def test_masters_a_holder_whose_packets_are_dropped_is_replaced_and_the_fleet_settles(
        masters):
    masters_partition_and_heal(masters, masters.net.drop)


if os.geteuid() != 0:  # say why once, not per test
    pytestmark = pytest.mark.skip(reason="network namespaces need root (ip netns add)")
