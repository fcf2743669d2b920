"""Fleet leases: what a lease backend (Redis, PostgreSQL) must answer.

A companion with ``"singleton": "fleet"`` runs on one host of a fleet at a
time. Which host is decided by a lease kept in a service the site already
runs, named by ``companion_lease_url``; the scheme picks the backend.

Every call here blocks on the network (with the timeout the backend was
opened with), so none of it runs in the manager's event loop: see the keeper
for who calls it and docs/fleet.md for the safety argument. This module only
states the contract both backends keep, so that the keeper and the tests can
treat them alike:

- ``try_acquire`` takes the lease when it is free or expired and returns the
  fencing token, an integer larger than every token handed out before for
  that name, across restarts of the service too (even one that lost its
  data). ``delay`` is how long the new holder must wait before starting its
  companion, because the service cannot tell whether the previous holder has
  certainly stopped (a Chubby-style lock-delay); 0 when it can.
- ``renew`` extends a lease we hold by ``ttl`` from the moment the service
  handles the call; False means it is no longer ours.
- ``release`` gives a lease we hold up at once (a graceful stop), so that a
  handoff does not wait for the TTL.

Any failure to ask the service (refused, timed out, bad credentials) raises
``LeaseUnavailable`` with a message an operator can act on.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from .spec import LEASE_SCHEMES, ConfigError, lease_scheme_fault, redacted


class LeaseUnavailable(Exception):
    """The lease service could not be asked; str() says why."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the holding manager's ``host:pid`` and its token."""

    owner: str
    token: int


@dataclass(frozen=True)
class Acquired:
    """The lease is ours with this token; start the companion after ``delay`` s."""

    token: int
    delay: float = 0.0


@dataclass(frozen=True)
class Busy:
    """Someone else holds the lease (``holder`` is None when it cannot be read)."""

    holder: Holder | None


class Backend(Protocol):
    """One connection to a lease service; see the module docstring."""

    def try_acquire(self, name: str, owner: str, ttl: float) -> Acquired | Busy: ...
    def renew(self, name: str, token: int, ttl: float) -> bool: ...
    def release(self, name: str, token: int) -> None: ...
    def close(self) -> None: ...


def open_backend(url: str, timeout: float) -> Backend:
    """The backend ``url``'s scheme names, its calls bounded by ``timeout``
    seconds. ConfigError names the fix for an unknown scheme or a missing
    client library; LeaseUnavailable, a service that cannot be reached now."""
    fault = lease_scheme_fault(url, _importable)
    if fault:
        raise ConfigError(fault)
    module_name, _, _ = LEASE_SCHEMES[url.partition("://")[0].lower()]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return module.open(url, timeout)


def url_fault(url: str) -> str | None:
    """Why the backend of ``url``'s scheme cannot use it, found without
    connecting (None: it can); the scheme and the client must be known good."""
    module_name, _, _ = LEASE_SCHEMES[url.partition("://")[0].lower()]
    module = importlib.import_module(f"{__package__}.{module_name}")
    fault = module.url_fault(url)
    if fault is None:
        return None
    return (f"companion_lease_url {redacted(url)!r} is not a URL the {module.CLIENT} client "
            f"can use: {fault}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
