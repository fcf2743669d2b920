"""The companion settings, as real Gunicorn settings.

Importing this module registers them: Gunicorn's ``SettingMeta`` appends each
class to ``KNOWN_SETTINGS`` when it is defined, and ``Config()`` copies that
list, so this must be imported before Gunicorn builds its ``Config`` (the
Application classes in ``app.py`` import it at module level). They then
validate like every other setting, show in ``--print-config`` and, for the
scalar ones, get command-line flags.
"""

from __future__ import annotations

import stat
from typing import Any

from gunicorn.config import KNOWN_SETTINGS, Setting, validate_bool

from . import spec

SECTION = "Companions"


def _from_cli(value: Any) -> Any:
    """Command-line values arrive as strings; config files give real types."""
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _int_from_cli(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip().lower() in ("", "none"):
            return None
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _size_from_cli(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _bool_from_cli(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes",
                                                             "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return value


def validate_workers(value: Any) -> list:
    # Shape only: the full per-entry check needs the defaults, and collects
    # every problem at once (spec.parse_companions), which Gunicorn's
    # one-value-at-a-time validators cannot do.
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"companion_workers must be a list of dicts, got {type(value).__name__}")
    return list(value)


def validate_optional_path(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a path, got {value!r}")
    return value


def validate_optional_seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return spec.validate_seconds(_from_cli(value))


class FileMode(int):
    """A permission mode that prints as people write it (``0o660``, not 432):
    Gunicorn's --print-config shows the validated value."""

    def __repr__(self) -> str:
        return f"{int(self):#o}"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self) if not spec else format(int(self), spec)


def validate_mode(value: Any) -> int:
    if isinstance(value, str):
        value = int(value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(f"expected a permission mode like 0o600, got {value!r}")
    if value & (stat.S_IRUSR | stat.S_IWUSR) != stat.S_IRUSR | stat.S_IWUSR:
        raise ValueError(f"mode {value:#o} must let the owner read and write the socket")
    return FileMode(value)


class CompanionWorkers(Setting):
    name = "companion_workers"
    section = SECTION
    validator = validate_workers
    default = []
    desc = """\
        The companion processes to run beside the HTTP workers.

        A list of dicts, each with a ``name`` and either a ``target``
        (``"module:callable"``; the callable takes no arguments and blocks like
        a worker's main loop) or a ``command`` (a program to run). The other
        keys (``cwd``, ``env``, ``processes``, ``singleton``, ``stop_timeout``,
        ``stdout``, ``max_memory``, ...) are listed in docs/configuration.md;
        a key left out takes the global ``companion_<key>`` setting.
        """


class CompanionConfigFile(Setting):
    name = "companion_config_file"
    section = SECTION
    cli = ["--companion-config-file"]
    meta = "FILE"
    validator = validate_optional_path
    default = None
    desc = """\
        A Python file with the companion settings, read instead of the main config.

        The file sets ``companion_workers`` and the ``companion_*`` defaults.

        Reloads (SIGHUP, ``gunicorn-companion reread``) read it again.
        """


_DEFAULT_DOCS = {
    "stop_signal": ("SIGNAL", "The signal that asks a companion to stop (a name like SIGTERM, "
                              "TERM or INT, or a number)."),
    "stop_timeout": ("SECONDS", "Seconds a companion has to exit after its stop signal before "
                                "it is sent SIGKILL."),
    "reload_timeout": ("SECONDS", "Seconds to wait for the old process to exit when a companion "
                                  "is restarted (a `restart`, or a reread or HUP that changed "
                                  "it), before SIGKILL. None: the companion's own "
                                  "stop_timeout, so a restart is as patient as a stop."),
    "stop_as_group": ("BOOL", "Send the stop signal to the companion's whole process group "
                              "instead of its main process only. Off by default: a process "
                              "pool (Celery prefork, RQ's WorkerPool, django-q) stops its own "
                              "children gracefully, and a signal sent to them directly kills "
                              "their work. SIGKILL at stop_timeout always goes to the group."),
    "startsecs": ("SECONDS", "Seconds a companion must stay up to count as started (STARTING "
                             "-> RUNNING)."),
    "restart_delay": ("SECONDS", "Seconds a companion that exited waits in BACKOFF before it is "
                                 "started again (doubled for each failed start in a row)."),
    "max_restart_delay": ("SECONDS", "The longest BACKOFF delay: the doubling of restart_delay "
                                     "for a companion that keeps failing to start stops here."),
    "startretries": ("N", "How many times a companion that exits before RUNNING is retried "
                          "before it goes FATAL and stays down (None: forever)."),
    "stdout": ("PATH", "Where a companion's standard output goes: a file path (opened in append "
                       "mode) or 'inherit' to share the master's."),
    "stderr": ("PATH", "Where a companion's standard error goes: a file path, 'stdout' to merge "
                       "it with standard output, or 'inherit' to share the master's."),
    "stdout_maxbytes": ("BYTES", "Rotate a companion's stdout file when it would grow past this "
                                 "size (bytes, or like '50MB'; 0: never)."),
    "stdout_backups": ("N", "How many rotated stdout files to keep (file.1 ... file.N)."),
    "stderr_maxbytes": ("BYTES", "Rotate a companion's stderr file when it would grow past this "
                                 "size (bytes, or like '50MB'; 0: never)."),
    "stderr_backups": ("N", "How many rotated stderr files to keep (file.1 ... file.N)."),
    "timestamps": ("BOOL", "Prefix each line a companion writes with the time the manager read "
                           "it."),
    "timestamp_format": ("FORMAT", "The strftime format of those timestamps."),
}


def _checked_as_written(check, convert):
    # Gunicorn stores what the validator returns; keep the value as the user
    # wrote it (e.g. "SIGTERM") once it passes, and let spec normalise it, so
    # --print-config shows what was configured.
    def validate(value: Any) -> Any:
        value = convert(value)
        check(value)
        return value

    return validate


def _defaultable_setting(key: str):
    validator, builtin = spec.DEFAULTABLE_KEYS[key]
    meta, text = _DEFAULT_DOCS[key]
    convert = {"SECONDS": _from_cli, "N": _int_from_cli, "BYTES": _size_from_cli,
               "BOOL": _bool_from_cli}.get(meta, lambda v: v)
    attrs = {
        "name": f"companion_{key}",
        "section": SECTION,
        "cli": [f"--companion-{key.replace('_', '-')}"],
        "meta": meta,
        "validator": _checked_as_written(validator, convert),
        "default": builtin,
        "desc": f"{text}\n\nThe default for companions that do not set ``{key}`` themselves.",
        "__module__": __name__,
        "__qualname__": f"Companion_{key}",
    }
    return type(Setting)(f"Companion_{key}", (Setting,), attrs)


DEFAULTABLE_SETTINGS = {key: _defaultable_setting(key) for key in spec.DEFAULTABLE_KEYS}


class CompanionLockDir(Setting):
    name = "companion_lock_dir"
    section = SECTION
    cli = ["--companion-lock-dir"]
    meta = "DIR"
    validator = validate_optional_path
    default = None
    desc = """\
        Directory of the lock files that keep singleton companions single.

        When unset: ``$XDG_RUNTIME_DIR/gunicorn-companion`` if that variable is
        set to a directory of the manager's user, else
        ``/tmp/gunicorn-companion-<uid>``. It is created (mode 0700) when
        missing. It must belong to the manager's user (or root), not be a
        symlink, and not be writable by group or others: otherwise the boot
        stops, naming the directory and the fault.
        """


class CompanionLeaseUrl(Setting):
    name = "companion_lease_url"
    section = SECTION
    cli = ["--companion-lease-url"]
    meta = "URL"
    validator = validate_optional_path
    default = None
    desc = """\
        Where fleet singletons (``"singleton": "fleet"``) keep their leases.

        ``redis://host:6379/0`` (also ``rediss://`` and ``unix://``; needs
        ``pip install 'gunicorn-companion[redis]'``) or
        ``postgresql://user@host/db`` (needs ``gunicorn-companion[postgresql]``).
        Every host of the fleet names the same service. Set it only when some
        companion is a fleet singleton: either without the other stops the
        boot. See docs/fleet.md.
        """


class CompanionLeaseTtl(Setting):
    name = "companion_lease_ttl"
    section = SECTION
    cli = ["--companion-lease-ttl"]
    meta = "SECONDS"
    validator = lambda v: spec.validate_lease_ttl(_from_cli(v))  # noqa: E731
    default = spec.DEFAULT_LEASE_TTL
    desc = """\
        Seconds a fleet singleton's lease lasts without renewal.

        The manager renews it every third of this. A host that stops hearing
        from the lease service stops its fleet singletons (``stop_timeout``,
        then SIGKILL) before the lease can expire, so each fleet singleton's
        ``stop_timeout`` plus 1 second must fit in half of this, or the boot
        stops. Another host takes over within about this long after the
        holder is lost; a graceful stop hands over at once.
        """


class CompanionGcFreeze(Setting):
    name = "companion_gc_freeze"
    section = SECTION
    cli = ["--companion-gc-freeze"]
    meta = "BOOL"
    validator = validate_bool
    default = True
    desc = """\
        Freeze the garbage collector's view of preloaded objects before forking.

        ``gc.freeze()`` runs in the master before it forks the companion
        manager, and in the manager before each companion, so collector passes
        in companions do not write to (and so unshare) the preloaded pages.
        Only has an effect with ``preload_app``.
        """


class CompanionMemoryCheckInterval(Setting):
    name = "companion_memory_check_interval"
    section = SECTION
    cli = ["--companion-memory-check-interval"]
    meta = "SECONDS"
    validator = lambda v: spec.validate_seconds(_from_cli(v))  # noqa: E731
    default = 5.0
    desc = """\
        How often the manager measures companions that set ``max_memory``.
        """


class CompanionManagerStopTimeout(Setting):
    name = "companion_manager_stop_timeout"
    section = SECTION
    cli = ["--companion-manager-stop-timeout"]
    meta = "SECONDS"
    validator = validate_optional_seconds
    default = None
    desc = """\
        Seconds the master gives the companion manager to stop at shutdown.

        After that it kills the manager, and with it every companion.

        When unset: the slowest companion's ``stop_timeout`` plus
        ``companion_manager_shutdown_buffer``.
        """


class CompanionManagerShutdownBuffer(Setting):
    name = "companion_manager_shutdown_buffer"
    section = SECTION
    cli = ["--companion-manager-shutdown-buffer"]
    meta = "SECONDS"
    validator = lambda v: spec.validate_seconds(_from_cli(v))  # noqa: E731
    default = 5.0
    desc = """\
        Seconds added to the slowest stop_timeout when deriving the manager's.

        Used when ``companion_manager_stop_timeout`` is unset.
        """


class CompanionControlSocket(Setting):
    name = "companion_control_socket"
    section = SECTION
    cli = ["--companion-control-socket"]
    meta = "PATH"
    validator = validate_optional_path
    default = None
    desc = """\
        The companion manager's UNIX control socket (off when unset).

        ``gunicorn-companion -s PATH status`` talks to it. Its directory must
        belong to the manager's user (or root) and not be writable by group or
        others (so not ``/tmp`` itself). The socket belongs to Gunicorn's
        ``user`` and ``group``.
        """


class CompanionControlSocketMode(Setting):
    name = "companion_control_socket_mode"
    section = SECTION
    cli = ["--companion-control-socket-mode"]
    meta = "MODE"
    validator = validate_mode
    default = "0o600"
    desc = """\
        Permission bits of the control socket, in octal.

        For example ``0o660`` lets the group in (members through a
        supplementary group too). The socket is created with these bits,
        never wider.
        """


COMPANION_SETTINGS = {cls.name: cls for cls in KNOWN_SETTINGS if cls.section == SECTION}
