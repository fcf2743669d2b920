"""The PostgreSQL lease backend (``postgresql://``, ``postgres://``), over psycopg 3.

Two objects in the database (and schema) the URL names, created on first
use (docs/fleet.md, "PostgreSQL"):

- ``gunicorn_companion_lease(name, owner, token, expires_at)``: one row per
  lease name while someone holds it (or held it and let it expire).
- ``gunicorn_companion_lease_token``: the sequence the fencing tokens come
  from. A sequence never goes back, across restarts and crashes of the server
  too (its WAL record runs ahead of the values it hands out). It starts at the
  server's clock in microseconds when it is created, so that a database that
  lost everything and is created again still hands out larger tokens than
  before, as long as the server's clock did not go back.
- The row named ``''`` (no companion has an empty name) records when the
  table was created or last found without it, in its ``expires_at``. An
  acquisition within one TTL of that moment, or when the row is missing,
  carries a lock-delay of the rest of that TTL: the leases are new either
  because the fleet is new or because the database lost them (a new cluster,
  a restored backup, a TRUNCATE), and in the second case a previous holder
  may still be running until its own clock tells it the lease is gone.

Every expiry is the server's ``clock_timestamp() + ttl``, computed in the
statement that checks or extends the lease, so the server holds a lease at
least ``ttl`` from the moment it handles the call: never less than the holder
reckons from the moment before it sent the call.

Why not a session advisory lock alone: the server frees it when it notices the
holder's connection is gone, which for a holder that froze or lost its network
is only when TCP keepalive gives up (minutes by default), and at once when the
server restarts, while the old holder may well still run its companion. A row
with an expiry ties the lease to the holder's clock instead of to the life of a
connection.

Each call is one autocommit statement (the acquisition adds a read of the
holder when the lease is busy), abandoned by our own clock after ``timeout``
(see ``_fetch``), with ``statement_timeout`` and ``lock_timeout`` on the
server and TCP keepalives with ``tcp_user_timeout`` so that the kernel gives
up on a connection whose packets are silently dropped, too. Any failure
closes the connection (the next call opens a new one) and raises
LeaseUnavailable. No retries: the keeper decides when to ask again.
"""

from __future__ import annotations

import asyncio
import math

import psycopg
from psycopg import conninfo as pg_conninfo

from .lease import Acquired, Busy, Holder, LeaseUnavailable

TABLE = "gunicorn_companion_lease"
SEQUENCE = "gunicorn_companion_lease_token"
EPOCH = ""  # the name of the row that dates the table (see the docstring)

# Any 64-bit constant of our own: it serializes the creation of the objects
# when several hosts start at once (CREATE ... IF NOT EXISTS alone can fail
# with a unique violation in the catalogs when two sessions race).
_SCHEMA_LOCK_KEY = 0x6775_6E69_636F_6D70 >> 1  # "gunicomp", as a positive bigint

# One round trip (no parameters: the simple query protocol takes several
# statements) when a connection is opened. The sequence's start is computed,
# which CREATE SEQUENCE (a utility statement) cannot take as an expression,
# hence the DO block.
_CREATE_SCHEMA = f"""
BEGIN;
SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY});
CREATE TABLE IF NOT EXISTS {TABLE} (
  name text PRIMARY KEY, owner text NOT NULL, token bigint NOT NULL,
  expires_at timestamptz NOT NULL);
INSERT INTO {TABLE} VALUES ('{EPOCH}', '', 0, clock_timestamp())
 ON CONFLICT (name) DO NOTHING;
DO $$
BEGIN
  IF to_regclass('{SEQUENCE}') IS NULL THEN
    EXECUTE format('CREATE SEQUENCE {SEQUENCE} START WITH %s',
                   floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
  END IF;
END
$$;
COMMIT;
"""

# Takes the row when it is absent or expired (a fresh token), or adopts it
# when it is already ours (an acquisition whose reply was lost: same owner,
# same token, extended). The sequence is advanced on every attempt, taken or
# not; the gaps cost nothing and tokens still only grow.
_ACQUIRE = f"""
INSERT INTO {TABLE} AS lease (name, owner, token, expires_at)
VALUES (%(name)s, %(owner)s, nextval('{SEQUENCE}'),
        clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
   SET token = CASE WHEN lease.owner = excluded.owner AND lease.expires_at > clock_timestamp()
                    THEN lease.token ELSE excluded.token END,
       owner = excluded.owner,
       expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
 WHERE lease.expires_at <= clock_timestamp() OR lease.owner = excluded.owner
RETURNING token,
  -- the lock-delay: the rest of one TTL from the epoch, a whole TTL without one
  greatest(0, coalesce(extract(epoch FROM
    (SELECT e.expires_at FROM {TABLE} e WHERE e.name = '{EPOCH}')
    + make_interval(secs => %(ttl)s) - clock_timestamp()), %(ttl)s))::float8
"""

_HOLDER = f"SELECT owner, token FROM {TABLE} WHERE name = %(name)s"

_RENEW = f"""
UPDATE {TABLE} SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
 WHERE name = %(name)s AND token = %(token)s AND expires_at > clock_timestamp()
RETURNING token
"""

_RELEASE = f"DELETE FROM {TABLE} WHERE name = %(name)s AND token = %(token)s RETURNING token"

# Keepalive probes start after this many idle seconds (libpq takes whole
# seconds, 1 at least) and repeat this often; tcp_user_timeout then ends the
# connection once nothing has been acknowledged for the call's timeout.
_KEEPALIVE_SECONDS = 1


def connection_parameters(timeout: float) -> dict[str, str]:
    """The libpq parameters that bound every call by ``timeout`` seconds."""
    timeout_ms = max(1, int(timeout * 1000))
    return {
        # libpq counts whole seconds and raises anything below 2 to 2
        "connect_timeout": str(max(2, math.ceil(timeout))),
        "keepalives": "1",
        "keepalives_idle": str(_KEEPALIVE_SECONDS),
        "keepalives_interval": str(_KEEPALIVE_SECONDS),
        "keepalives_count": str(max(1, math.ceil(timeout / _KEEPALIVE_SECONDS))),
        "tcp_user_timeout": str(timeout_ms),
        # synchronous_commit: a lease we were told we hold must survive a crash
        # of the server (docs/fleet.md states the durability assumed).
        "options": (f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
                    " -c synchronous_commit=on"),
        "application_name": "gunicorn-companion lease",
    }


def describe(url: str) -> str:
    """``user@host:port/dbname`` of ``url``, without its password, for messages."""
    try:
        params = pg_conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unparsable URL)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = params.get("host") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{user}{host}{port}/{params.get('dbname') or ''}"


class PostgresBackend:
    """One connection to one PostgreSQL server; see the module docstring."""

    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout
        self.where = describe(url)
        self._conn: psycopg.AsyncConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, **connection_parameters(self.timeout))
            self._conn = conn  # set first, so that a timeout can close it
            await conn.execute(_CREATE_SCHEMA)
        return self._conn

    async def _ask(self, statement: str, params: dict) -> tuple | None:
        conn = await self._connection()
        return await (await conn.execute(statement, params)).fetchone()

    def _fetch(self, statement: str, params: dict) -> tuple | None:
        """One statement's first row, within ``timeout`` seconds by our own clock.

        libpq has no deadline for a whole call: a server that is stopped or
        stuck while its kernel still acknowledges our packets defeats every
        TCP timeout. So each call runs on a private asyncio loop (no thread)
        and is abandoned when the timeout passes."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        task = self._loop.create_task(self._ask(statement, params))
        self._loop.run_until_complete(asyncio.wait([task], timeout=self.timeout))
        if not task.done():
            # Close the socket before cancelling: psycopg answers a cancelled
            # query by asking the server to cancel it and waiting up to 5 s,
            # which is the wait we are ending. A closed connection has nothing
            # to cancel.
            self._drop_connection()
            task.cancel()
            self._loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            # named as the Redis backend names its timeouts (status shows it)
            raise LeaseUnavailable(f"PostgreSQL {self.where}: TimeoutError: no answer within "
                                   f"{self.timeout:g}s; is the server up and reachable?")
        try:
            return task.result()
        except psycopg.Error as exc:
            raise self._fault(exc) from None

    def _fault(self, exc: psycopg.Error) -> LeaseUnavailable:
        """Drop the connection (the next call opens a new one) and say why."""
        self._drop_connection()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            hint = (f"; grant the user CREATE on the schema, or create {TABLE} and {SEQUENCE}"
                    " as docs/fleet.md shows")
        elif isinstance(exc, psycopg.errors.QueryCanceled):
            hint = f"; the server did not answer within {self.timeout:g}s"
        elif isinstance(exc, psycopg.OperationalError):
            hint = "; is the server running, reachable and the URL right?"
        return LeaseUnavailable(f"PostgreSQL {self.where}: {message}{hint}")

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            # finish() closes the socket at once, without a round trip that
            # could hang on the server we are giving up on.
            conn.pgconn.finish()

    def try_acquire(self, name: str, owner: str, ttl: float) -> Acquired | Busy:
        row = self._fetch(_ACQUIRE, {"name": name, "owner": owner, "ttl": float(ttl)})
        if row is not None:
            token, delay = row
            return Acquired(token=int(token), delay=float(delay))
        holder = self._fetch(_HOLDER, {"name": name})
        # None: released between our two statements; the next attempt takes it
        return Busy(Holder(owner=holder[0], token=int(holder[1])) if holder else None)

    def renew(self, name: str, token: int, ttl: float) -> bool:
        row = self._fetch(_RENEW, {"name": name, "token": token, "ttl": float(ttl)})
        return row is not None

    def release(self, name: str, token: int) -> None:
        self._fetch(_RELEASE, {"name": name, "token": token})

    def close(self) -> None:
        self._drop_connection()
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.close()


CLIENT = "PostgreSQL"  # for messages


def url_fault(url: str) -> str | None:
    """Why libpq cannot use ``url`` (None: it can), found without connecting."""
    try:
        params = pg_conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        return str(exc).strip()
    # libpq parses a port only when it connects: a typo there would show
    # only as a service that cannot be reached
    for port in str(params.get("port") or "").split(","):
        if port and not port.isdigit():
            return f"port {port!r} is not a number"
    return None


def open(url: str, timeout: float) -> PostgresBackend:  # shadows open(): the contract names it
    """A backend on ``url``; nothing is sent until the first call."""
    try:
        pg_conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise LeaseUnavailable(f"PostgreSQL URL: {exc}") from None
    return PostgresBackend(url, timeout)
