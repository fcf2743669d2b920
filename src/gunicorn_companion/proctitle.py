"""Process titles: what ``ps`` shows for the manager and each companion, and
the kernel's 15-byte name (``comm``) that top, pgrep and the OOM killer's log
show.

- The title (``/proc/PID/cmdline``, what ``ps -ef`` and ``ps aux`` show):
  ``gunicorn: companion manager [proc_name]`` and ``gunicorn: companion NAME
  [proc_name]``, as Gunicorn titles its master and workers. With setproctitle
  installed (an optional dependency) it sets the title; without it, the title
  is written over the process's own argument area, whose bounds the kernel
  gives (``arg_start`` and ``arg_end``, fields 48 and 49 of /proc/self/stat):
  padded with NULs, cut to fit. That memory is the process's own: Python
  decoded ``sys.argv`` from it at start-up and never reads it again; glibc's
  ``program_invocation_name`` still points there and reads the title
  instead, a string ending within the area like the argument it replaces.
  It is written through /proc/self/mem, which any user may do to itself and
  which fails cleanly on a bad address; but a process that changed
  credentials (a companion of a manager dropped to Gunicorn's user, or with
  a user of its own) is not dumpable, its /proc/self files then belong to
  root and that write is refused, so the bytes are copied in place instead
  (what setproctitle does).
- ``comm`` (``/proc/PID/comm``): the companion's name, set after the title
  (setproctitle sets it to the title's first 15 bytes, ``gunicorn: compa``
  for every companion alike) with prctl(PR_SET_NAME), which works whatever
  the credentials; /proc/self/comm where there is no libc to call.

A companion that execs another program (a ``command``, or a target that
hands off) shows that program's own arguments and name from then on: exec
replaces both, and nothing of the old process can outlive it.
"""

from __future__ import annotations

import os

from . import procfs, spawn

COMM_BYTES = 15  # TASK_COMM_LEN less its NUL
MANAGER_COMM = "companion-mgr"


def manager_title(proc_name: str) -> str:
    return f"gunicorn: companion manager [{proc_name}]"


def companion_title(name: str, proc_name: str) -> str:
    return f"gunicorn: companion {name} [{proc_name}]"


def comm_of(name: str) -> str:
    """The companion's name in 15 bytes: cut at the end, but an instance
    number (``celery-high:12``) is kept, for it tells the instances apart."""
    data = name.encode()
    if len(data) <= COMM_BYTES:
        return name
    base, colon, instance = name.rpartition(":")
    if colon and instance.isdigit() and len(instance) < COMM_BYTES - 1:
        room = COMM_BYTES - len(instance) - 1
        return _cut(base.encode(), room) + ":" + instance
    return _cut(data, COMM_BYTES)


def _cut(data: bytes, size: int) -> str:
    """At most ``size`` bytes, never half a UTF-8 character."""
    return data[:size].decode("utf-8", "ignore")


def set_title(title: str, comm: str) -> None:
    """Title this process and name it ``comm``; never raises (a title is
    worth no failure)."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        write_argument_area(title)
    else:
        setproctitle(title)
    set_comm(comm)


def set_comm(comm: str) -> bool:
    """Name the calling thread: the main one, for the manager and companions
    are single threaded when titled."""
    name = _cut(comm.encode(), COMM_BYTES)
    if spawn.set_thread_name(name.encode()):
        return True
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name)
    except OSError:
        return False
    return True


def write_argument_area(title: str) -> bool:
    """Make ``title`` this process's command line (see the module docstring)."""
    area = procfs.argument_area(os.getpid())
    if area is None:
        return False
    start, end = area
    size = end - start
    if size < 2:
        return False
    # the last byte stays NUL: the kernel then reads the area as it is, not
    # on into the environment after it
    data = _cut(title.encode(), size - 1).encode().ljust(size, b"\0")
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data)
    except PermissionError:
        # not dumpable after a change of credentials: /proc/self/mem is root's
        return spawn.write_own_memory(start, data)
    except (OSError, OverflowError, ValueError):
        return False
    return True
