"""Who the manager and each companion run as, and dropping to it.

A root Gunicorn with ``user``/``group`` set gives its HTTP workers that
identity; the companions get the same one (their code runs job payloads read
from queues), and the manager too unless a companion has its own ``user`` or
``group``, which only root can switch to.

Names are looked up in the manager before it forks: a child runs only the
setgroups/setresgid/setresuid calls, no NSS lookup after fork.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
from dataclasses import dataclass


class Refused(OSError):
    """An OSError whose message says what was refused and why (it is shown as
    is, in the log and in ``status``)."""

    def __init__(self, message: str):
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return self.strerror


class PrivilegeError(Refused):
    """The process could not become, or stay, the identity it must run as."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, sorted

    def describe(self) -> str:
        return f"{describe_uid(self.uid)}, {describe_gid(self.gid)}"


def describe_uid(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def describe_gid(gid: int) -> str:
    try:
        return f"gid {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"gid {gid}"


def lookup_user(value: str | int) -> pwd.struct_passwd:
    """A user by name or uid; KeyError when there is none."""
    if isinstance(value, int) or value.isdigit():
        return pwd.getpwuid(int(value))
    return pwd.getpwnam(value)


def lookup_group(value: str | int) -> grp.struct_group:
    """A group by name or gid; KeyError when there is none."""
    if isinstance(value, int) or value.isdigit():
        return grp.getgrgid(int(value))
    return grp.getgrnam(value)


def _identity(uid: int, gid: int, with_user_groups: bool) -> Identity:
    """``with_user_groups``: the user's supplementary groups from the group
    database (initgroups); otherwise only ``gid``."""
    groups = [gid]
    if with_user_groups:
        try:
            groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
        except KeyError:
            pass  # a uid without a name has no groups to list (Gunicorn skips initgroups too)
    return Identity(uid, gid, tuple(sorted(set(groups))))


def gunicorn_identity(cfg) -> Identity:
    """What Gunicorn's workers run as: ``user``, ``group``, ``initgroups``
    (Gunicorn's settings default to the master's own euid and egid)."""
    return _identity(cfg.uid, cfg.gid, cfg.initgroups)


def companion_identity(user: str | None, group: str | None, base: Identity) -> Identity:
    """A companion's identity: Gunicorn's, unless it sets its own ``user``
    (with that user's primary and supplementary groups, as supervisord's
    ``user=``) or ``group``."""
    if user is None and group is None:
        return base
    try:
        entry = lookup_user(user) if user is not None else None
    except KeyError:
        raise PrivilegeError(f"user {user!r} does not exist") from None
    uid, gid = (entry.pw_uid, entry.pw_gid) if entry else (base.uid, base.gid)
    if group is not None:
        try:
            gid = lookup_group(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"group {group!r} does not exist") from None
    return _identity(uid, gid, with_user_groups=entry is not None)


def of_spec(spec, base: Identity) -> Identity:
    return companion_identity(spec.user, spec.unix_group, base)


def keeps_root(specs, base: Identity) -> bool:
    """Must the manager stay root? Only when a companion runs as someone else
    than Gunicorn's workers (it can switch only from root)."""
    return any(of_spec(spec, base) != base for spec in specs)


def faults(specs, base: Identity) -> list[str]:
    """Companions this process cannot run as whom they must run as."""
    problems = []
    for spec in specs:
        try:
            why = unreachable(of_spec(spec, base))
        except PrivilegeError as exc:
            why = str(exc)
        if why:
            problems.append(f"companion {spec.name!r}: {why}")
    return problems


def needs_switch(identity: Identity) -> bool:
    return (identity.uid, identity.gid) != (os.geteuid(), os.getegid())


def unreachable(identity: Identity) -> str | None:
    """Why this process cannot become ``identity``, or None if it can."""
    if not needs_switch(identity) or os.geteuid() == 0:
        return None
    return (f"cannot run as {identity.describe()}: the companion manager runs as "
            f"{describe_uid(os.geteuid())} without root (it keeps root only when Gunicorn "
            "runs as root and a companion sets its own user or group at boot)")


def drop_to(identity: Identity) -> bool:
    """Become ``identity`` for good; nothing to do (False) when we already are it.

    The order matters: supplementary groups and the gid can only be changed
    while we are still root, so they go before the uid. All three ids (real,
    effective, saved) are set, and then checked, with a last check that root
    cannot be regained. Gunicorn's workers keep root's supplementary groups
    when ``initgroups`` is off; companions get only their gid instead.

    Changing credentials clears the parent-death signal (prctl(2)): callers
    drop first and set PDEATHSIG after.
    """
    if not needs_switch(identity):
        return False
    if os.geteuid() != 0:
        raise PrivilegeError(unreachable(identity))
    uid, gid = identity.uid, identity.gid
    try:
        os.setgroups(list(identity.groups))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {identity.describe()}: {exc.strerror}") from None
    if (os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid)
            or sorted(set(os.getgroups())) != list(identity.groups)):
        raise PrivilegeError(f"switching to {identity.describe()} did not take effect")
    if uid != 0:
        try:
            os.setresuid(0, 0, 0)
        except PermissionError:
            return True
        raise PrivilegeError(f"after switching to {identity.describe()}, root could be regained")
    return True
