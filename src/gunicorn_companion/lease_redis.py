"""The Redis lease backend (``redis://``, ``rediss://``, ``unix://``), over redis-py.

Two keys per lease name, in the database the URL names:

- ``gunicorn-companion:lease:NAME`` = ``"TOKEN OWNER"``, with the TTL as its
  expiry: present while someone holds the lease.
- ``gunicorn-companion:token:NAME`` = the last token handed out, no expiry.

Each call is one Lua script, so it is atomic on the server. A new token is
``max(last + 1, the server's TIME in microseconds)``: it grows from one
holder to the next, and keeps growing when a Redis without persistence
restarts empty and the counter is gone, as long as the server's clock does
not go back (docs/fleet.md states the assumption). An absent counter means
the service cannot tell whether a previous holder may still run, so that
acquisition carries a lock-delay of one TTL; a lease that merely expired was
given up by its holder's own clock (its manager stops it before then), so
the next holder starts at once.

Retries are off: a timed-out call surfaces as LeaseUnavailable at once, and
the keeper decides when to ask again. An acquisition whose reply was lost is
adopted by the next one (same owner), so it cannot strand the lease.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .lease import Acquired, Busy, Holder, LeaseUnavailable

PREFIX = "gunicorn-companion"

# KEYS: lease, counter. ARGV: owner, ttl in ms.
# Returns {1, token, delay_flag} when acquired, {0, "TOKEN OWNER" or false} when busy.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ' ', 1, true)
  if sep and string.sub(current, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, string.sub(current, 1, sep - 1), 0}
  end
  return {0, current}
end
local last = redis.call('GET', KEYS[2])
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
if last and tonumber(last) + 1 > token then
  token = tonumber(last) + 1
end
token = string.format('%.0f', token)
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
if last then return {1, token, 0} end
return {1, token, 1}
"""

# KEYS: lease. ARGV: token, ttl in ms. 1 when extended, 0 when not ours.
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: token. Deletes it only if it is still ours.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _keys(name: str) -> list[str]:
    return [f"{PREFIX}:lease:{name}", f"{PREFIX}:token:{name}"]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _holder(value) -> Holder | None:
    text = value.decode() if isinstance(value, bytes) else str(value)
    token, _, owner = text.partition(" ")
    try:
        return Holder(owner=owner, token=int(token))
    except ValueError:
        return None


class RedisBackend:
    """One client of one Redis server; see the module docstring."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _call(self, script, keys, args):
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            # refused, timed out, LOADING, NOAUTH, READONLY...: not asked
            raise LeaseUnavailable(f"Redis: {type(exc).__name__}: {exc}") from None

    def try_acquire(self, name: str, owner: str, ttl: float) -> Acquired | Busy:
        reply = self._call(self._acquire, _keys(name), [owner, _ms(ttl)])
        if int(reply[0]) == 1:
            return Acquired(token=int(reply[1]), delay=ttl if int(reply[2]) else 0.0)
        return Busy(_holder(reply[1]) if len(reply) > 1 and reply[1] else None)

    def renew(self, name: str, token: int, ttl: float) -> bool:
        return int(self._call(self._renew, _keys(name)[:1], [token, _ms(ttl)])) == 1

    def release(self, name: str, token: int) -> None:
        self._call(self._release, _keys(name)[:1], [token])

    def close(self) -> None:
        try:
            self.client.close()
        except redis.RedisError:
            pass


CLIENT = "Redis"  # for messages


def url_fault(url: str) -> str | None:
    """Why redis-py cannot use ``url`` (None: it can), found without connecting."""
    try:
        redis.Redis.from_url(url).close()
    except ValueError as exc:
        return str(exc)
    return None


def open(url: str, timeout: float) -> RedisBackend:  # the name the backend contract asks for
    """A backend on ``url``; nothing is sent until the first call."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
    except ValueError as exc:
        raise LeaseUnavailable(f"Redis URL: {exc}") from None
    return RedisBackend(client)
