"""The lease contract (gunicorn_companion/lease.py), kept by every backend
against a real server: Debian's redis-server and PostgreSQL, started here.

Each test runs once per backend. A lease's timing is the point of most of
them, so they wait for conditions with deadlines (support.wait_until) and
check the times they observe against the TTL, never a fixed sleep.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from postgres_server import missing_reason, start_server
from redis_server import RedisServer, find_redis_server
from support import wait_until

from gunicorn_companion.lease import Acquired, Busy, LeaseUnavailable

TTL = 1.0
TIMEOUT = 0.5
# How far past its timeout a call may return on a loaded 2-core machine.
TIMEOUT_SLACK = 1.0
NAME = "sched"


class PostgresService:
    """A real PostgreSQL; a restart is a crash (SIGKILL of every process) and
    a recovery from the WAL, which keeps every committed lease and token."""

    backend = "postgresql"
    restart_loses_data = False

    def __init__(self, tmp_path):
        self.server = start_server()

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        self.server.kill()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def close(self) -> None:
        self.server.remove()


class RedisService:
    """A real redis-server without persistence: a restart loses every key."""

    backend = "redis"
    restart_loses_data = True

    def __init__(self, tmp_path):
        executable = find_redis_server()
        if executable is None:
            pytest.skip("redis-server is not on PATH: apt-get install redis-server")
        pytest.importorskip("redis", reason="pip install -e '.[redis]'")
        self.server = RedisServer(executable, tmp_path).start()

    @property
    def url(self) -> str:
        return self.server.url + "/0"

    def restart(self) -> None:
        self.server.stop(signal.SIGKILL)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def pause(self) -> None:
        self.server.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.server.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.server.stop()


SERVICES = {"postgresql": PostgresService, "redis": RedisService}


@pytest.fixture(params=sorted(SERVICES))
def service(request, tmp_path):
    if request.param == "postgresql" and missing_reason():
        pytest.skip(missing_reason())
    svc = SERVICES[request.param](tmp_path)
    try:
        yield svc
    finally:
        svc.close()


def open_backend(service, timeout: float = TIMEOUT):
    from gunicorn_companion import lease

    return lease.open_backend(service.url, timeout)


@pytest.fixture
def hosts(service):
    """Three backends on the service, as three hosts' keepers would hold them."""
    backends = [open_backend(service) for _ in range(3)]
    yield backends
    for backend in backends:
        backend.close()


def acquire(backend, owner: str, ttl: float = TTL):
    """try_acquire, waiting out a lock-delay's worth of nothing: just the reply."""
    return backend.try_acquire(NAME, owner, ttl)


def test_a_second_acquirer_is_busy_and_sees_the_holder(hosts):
    first = acquire(hosts[0], "host0:10")
    assert isinstance(first, Acquired)
    other = acquire(hosts[1], "host1:11")
    assert isinstance(other, Busy)
    assert other.holder is not None
    assert (other.holder.owner, other.holder.token) == ("host0:10", first.token)


def test_an_acquisition_whose_reply_was_lost_is_adopted_by_the_same_owner(hosts):
    first = acquire(hosts[0], "host0:10")
    again = acquire(hosts[2], "host0:10")  # the keeper restarted its connection
    assert isinstance(again, Acquired) and again.token == first.token


def test_renewals_keep_the_lease_past_its_ttl(hosts):
    started = time.monotonic()
    first = acquire(hosts[0], "host0:10")
    assert isinstance(first, Acquired)
    # Renew every TTL/4 for three TTLs, as a keeper does (the pause is the
    # renewal period, not a wait for something); in between, the others must
    # stay out.
    renewal = started
    while renewal < started + 3 * TTL:
        assert hosts[0].renew(NAME, first.token, TTL)
        assert isinstance(acquire(hosts[1], "host1:11"), Busy)
        renewal += TTL / 4
        time.sleep(max(0.0, renewal - time.monotonic()))


def test_an_unrenewed_lease_expires_after_its_ttl_and_the_next_token_is_larger(hosts):
    t0 = time.monotonic()  # as the keeper stamps it: before the call
    first = acquire(hosts[0], "host0:10")
    assert isinstance(first, Acquired)

    def taken():
        reply = acquire(hosts[1], "host1:11")
        return reply if isinstance(reply, Acquired) else None

    second = wait_until(taken, timeout=TTL + 10, interval=0.02, message="a takeover")
    taken_at = time.monotonic()
    # The service held it at least TTL from handling the first call, which
    # came after t0: never before the first holder's own deadline.
    assert taken_at >= t0 + TTL
    assert second.token > first.token
    # The old holder's renewal is refused: it is no longer ours.
    assert hosts[0].renew(NAME, first.token, TTL) is False


def test_a_release_hands_the_lease_over_at_once(hosts):
    first = acquire(hosts[0], "host0:10", ttl=60)
    assert isinstance(acquire(hosts[1], "host1:11"), Busy)
    hosts[0].release(NAME, first.token)
    second = acquire(hosts[1], "host1:11")
    assert isinstance(second, Acquired) and second.token > first.token


def test_a_stale_release_does_not_free_the_next_holders_lease(hosts):
    first = acquire(hosts[0], "host0:10")
    hosts[0].release(NAME, first.token)
    second = acquire(hosts[1], "host1:11", ttl=60)
    hosts[0].release(NAME, first.token)  # late, or repeated
    assert isinstance(acquire(hosts[2], "host2:12"), Busy)
    assert hosts[1].renew(NAME, second.token, 60)


def test_tokens_keep_growing_across_a_restart_of_the_service(service, hosts):
    if not service.restart_loses_data:
        # New tables carry a lock-delay for their first TTL (lease_postgres):
        # start past it, so that a delay after the restart would be its doing.
        wait_until(lambda: hosts[2].try_acquire("probe", "host2:12", TTL).delay == 0, 30,
                   interval=0.05, message="an acquisition without a lock-delay")
    first = acquire(hosts[0], "host0:10")
    hosts[0].release(NAME, first.token)
    service.restart()

    def granted():
        try:
            reply = acquire(hosts[1], "host1:11")
        except LeaseUnavailable:
            return None  # the connection from before the restart, dropped now
        return reply if isinstance(reply, Acquired) else None

    second = wait_until(granted, timeout=30, interval=0.05, message="an acquisition")
    assert second.token > first.token
    if service.restart_loses_data:
        # It cannot tell whether a holder from before still runs: a lock-delay.
        assert second.delay > 0
    else:
        assert second.delay == 0


def test_a_lease_held_across_a_crash_of_postgresql_stays_held(service, hosts):
    if service.restart_loses_data:
        pytest.skip("this service keeps no data across a restart")
    first = acquire(hosts[0], "host0:10", ttl=60)
    service.restart()
    # After its connection is found dead and replaced, the holder renews.
    renewed = wait_until(lambda: _renewed(hosts[0], first.token, 60), timeout=30,
                         interval=0.05, message="a renewal after the crash")
    assert renewed
    assert isinstance(_answer(lambda: acquire(hosts[1], "host1:11")), Busy)


def _renewed(backend, token, ttl):
    try:
        return backend.renew(NAME, token, ttl)
    except LeaseUnavailable:
        return None


def _answer(call, timeout=30):
    """call()'s reply once the service answers (after a restart)."""
    def answered():
        try:
            return (call(),)
        except LeaseUnavailable:
            return None
    return wait_until(answered, timeout=timeout, interval=0.05, message="an answer")[0]


def test_an_unreachable_service_raises_lease_unavailable_within_the_timeout(service, hosts):
    first = acquire(hosts[0], "host0:10")
    # Paused: connections are accepted by the kernel and nothing answers, the
    # case a connect or TCP timeout alone cannot end. Once on the connection
    # already open, once on a new one.
    service.pause()
    try:
        for backend, call in ((hosts[0], lambda b: b.renew(NAME, first.token, TTL)),
                              (open_backend(service), lambda b: acquire(b, "host2:12"))):
            began = time.monotonic()
            with pytest.raises(LeaseUnavailable) as caught:
                call(backend)
            assert time.monotonic() - began < TIMEOUT + TIMEOUT_SLACK
            assert str(caught.value)
    finally:
        service.resume()
    # Stopped: refused at once, and the message says what to check.
    service.stop()
    began = time.monotonic()
    with pytest.raises(LeaseUnavailable) as caught:
        acquire(hosts[1], "host1:11")
    assert time.monotonic() - began < TIMEOUT + TIMEOUT_SLACK
    assert ("refused" in str(caught.value).lower()
            or "connect" in str(caught.value).lower()), str(caught.value)


# PostgreSQL only: its tables are created on first use.

@pytest.fixture
def postgres():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_server()
    try:
        yield server
    finally:
        server.remove()


def test_postgresql_three_hosts_starting_at_once_on_an_empty_database_agree(postgres):
    """The tables and the sequence are created once, race-free: every host gets
    an answer, exactly one holds the lease, and the new tables mean a lock-delay."""
    from gunicorn_companion import lease_postgres

    replies: dict[int, object] = {}
    barrier = threading.Barrier(3)

    def host(i):
        backend = lease_postgres.open(postgres.url, 5.0)
        barrier.wait()
        try:
            replies[i] = backend.try_acquire(NAME, f"host{i}:1{i}", TTL)
        except LeaseUnavailable as exc:
            replies[i] = exc
        finally:
            backend.close()

    threads = [threading.Thread(target=host, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not [r for r in replies.values() if isinstance(r, LeaseUnavailable)], replies
    acquired = [r for r in replies.values() if isinstance(r, Acquired)]
    assert len(acquired) == 1, replies
    assert 0 < acquired[0].delay <= TTL


def test_postgresql_that_lost_its_tables_still_hands_out_larger_tokens_after_a_delay(postgres):
    """A database restored empty (or dropped and created again): tokens come from a
    new sequence that starts at the server's clock, and the first holder waits
    one TTL, as a holder from before may still run."""
    import psycopg

    from gunicorn_companion import lease_postgres

    backend = lease_postgres.open(postgres.url, 5.0)
    first = backend.try_acquire(NAME, "host0:10", 600)
    assert isinstance(first, Acquired)
    backend.close()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {lease_postgres.TABLE}; "
                     f"DROP SEQUENCE {lease_postgres.SEQUENCE}")
    backend = lease_postgres.open(postgres.url, 5.0)
    try:
        second = backend.try_acquire(NAME, "host1:11", 600)
    finally:
        backend.close()
    assert isinstance(second, Acquired)
    assert second.token > first.token
    assert second.delay > 590


def test_postgresql_without_the_right_to_create_the_tables_says_what_to_do(postgres):
    import psycopg

    from gunicorn_companion import lease_postgres

    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE ROLE plain LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    url = postgres.url.replace("postgres@", "plain@")
    backend = lease_postgres.open(url, 5.0)
    try:
        with pytest.raises(LeaseUnavailable) as caught:
            backend.try_acquire(NAME, "host0:10", TTL)
    finally:
        backend.close()
    message = str(caught.value)
    assert "permission denied" in message and "grant" in message, message


def test_postgresql_leases_wiped_under_connected_hosts_mean_a_lock_delay(postgres):
    """Every lease row deleted (a TRUNCATE, a restore of the table) while the
    hosts stay connected: the holder may still run until its own deadline, so
    whoever takes the lease next must wait a TTL first."""
    import psycopg

    from gunicorn_companion import lease_postgres

    holder, waiter = (lease_postgres.open(postgres.url, 5.0) for _ in range(2))
    try:
        ttl = 0.3
        # past the first TTL of the new tables: no lock-delay any more
        wait_until(lambda: holder.try_acquire("probe", "host0:10", ttl).delay == 0, 30,
                   interval=0.05, message="an acquisition without a lock-delay")
        first = holder.try_acquire(NAME, "host0:10", ttl)
        assert isinstance(first, Acquired) and first.delay == 0
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {lease_postgres.TABLE}")
        second = waiter.try_acquire(NAME, "host1:11", ttl)
    finally:
        holder.close()
        waiter.close()
    assert isinstance(second, Acquired)
    assert second.token > first.token
    assert second.delay == pytest.approx(ttl, abs=0.1)


@pytest.mark.parametrize(("timeout", "connect", "user_timeout", "probes"), [
    (0.2, "2", "200", "1"),     # libpq takes whole seconds, 2 at least, for connect_timeout
    (0.5, "2", "500", "1"),
    (2.0, "2", "2000", "2"),
    (2.5, "3", "2500", "3"),
])
def test_postgresql_connection_parameters_bound_a_call_by_its_timeout(
        timeout, connect, user_timeout, probes):
    lease_postgres = pytest.importorskip("gunicorn_companion.lease_postgres",
                                         reason="pip install -e '.[postgresql]'")
    params = lease_postgres.connection_parameters(timeout)
    assert params["connect_timeout"] == connect
    assert params["tcp_user_timeout"] == user_timeout
    assert params["keepalives"] == "1" and params["keepalives_idle"] == "1"
    assert params["keepalives_count"] == probes
    assert f"statement_timeout={user_timeout}" in params["options"]
    assert f"lock_timeout={user_timeout}" in params["options"]
    assert "synchronous_commit=on" in params["options"]


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://scheduler:secret@db.internal:6432/app", "scheduler@db.internal:6432/app"),
    ("postgres://db.internal/app?sslmode=require", "db.internal/app"),
    ("postgresql:///app", "localhost/app"),
])
def test_postgresql_messages_name_the_server_without_the_password(url, shown):
    lease_postgres = pytest.importorskip("gunicorn_companion.lease_postgres",
                                         reason="pip install -e '.[postgresql]'")
    assert lease_postgres.describe(url) == shown
