"""Files and directories another local user may have prepared are not trusted.

The rule for a directory we create files in (the lock directory, the control
socket's directory) is OpenSSH's StrictModes and the XDG runtime-dir rule:
it is not a symlink, it belongs to us (or root), and neither group nor others
can write it. Inside such a directory nobody else can swap a file for a
symlink, so paths there are safe to use.

Log files may live in directories others can write (``/tmp``, a shared
``logs/``): there no symlink is followed and no file another user owns is
written.
"""

from __future__ import annotations

import os
import stat

from .privileges import Refused, describe_uid


class UnsafePath(Refused):
    """A path another user could control; the message names it and the fault."""


def private_dir_fault(path: str) -> str | None:
    """What is wrong with ``path`` as a directory only we can write, or None."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be checked: {exc.strerror}"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link; give the real directory"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid not in (os.geteuid(), 0):
        return (f"is owned by {describe_uid(info.st_uid)}, not by "
                f"{describe_uid(os.geteuid())} that the companion manager runs as")
    if info.st_mode & 0o022:
        return (f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                "another user could replace what is in it (chmod go-w)")
    return None


def others_can_write(directory: str) -> bool:
    return private_dir_fault(directory) is not None


def open_lock_file(path: str, owner: tuple[int, int]) -> int:
    """Open (creating) a singleton's lock file: never through a symlink, and
    only a regular file owned by us or by ``owner`` (uid, gid), the
    companion's user, who gets the file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        if os.path.islink(path):  # ELOOP, or EACCES from fs.protected_symlinks
            raise UnsafePath(f"lock file {path!r} is a symbolic link; "
                             "refusing to follow it") from None
        raise
    try:
        _check_opened(fd, path, "lock file", {os.geteuid(), owner[0]}, "")
        _hand_over(fd, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_for_append(path: str, owner: tuple[int, int] | None = None) -> int:
    """Open (creating) a log file for appending. In a directory others can
    write, no symlink is followed and no file another user owns is written.
    ``owner`` (uid, gid): who the file is for; a root manager hands a file it
    created over to that user."""
    # O_NONBLOCK: a FIFO at the path must not block the manager (a file ignores it)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
    shared = others_can_write(os.path.dirname(path) or ".")
    if shared:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        if shared and os.path.islink(path):  # ELOOP, or EACCES from fs.protected_symlinks
            raise UnsafePath(f"log file {path!r} is a symbolic link in a directory others "
                             "can write; refusing to follow it") from None
        raise
    try:
        if shared:
            trusted = {os.geteuid()} | ({owner[0]} if owner else set())
            _check_opened(fd, path, "log file", trusted,
                          " in a directory others can write; refusing to write it")
        if owner:
            _hand_over(fd, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_opened(fd: int, path: str, what: str, trusted: set[int], why: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{what} {path!r} is not a regular file{why}")
    if info.st_uid not in trusted:
        ours = " or ".join(describe_uid(uid) for uid in sorted(trusted))
        raise UnsafePath(f"{what} {path!r} is owned by {describe_uid(info.st_uid)}, "
                         f"not by {ours}{why}")


def _hand_over(fd: int, owner: tuple[int, int]) -> None:
    """A root manager gives a file it made for a companion to that companion's user."""
    if os.geteuid() == 0 and os.fstat(fd).st_uid == 0 and owner[0] != 0:
        os.fchown(fd, *owner)
