"""Companion configuration values to frozen specs, collecting every error.

Pure: no processes, no imports of the targets (see ``targets.py`` for that),
so every rule here is pinned by table tests.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .privileges import lookup_group, lookup_user

INHERIT = "inherit"
MERGE_WITH_STDOUT = "stdout"

# Names end up in process titles, log lines, the control protocol and file
# names, so keep them to characters that need no quoting anywhere. (Character
# classes, shared with supervisor_import, which makes names that fit.)
NAME_FIRST_CHARACTERS = "A-Za-z0-9"
NAME_CHARACTERS = "A-Za-z0-9_.@-"
NAME_MAX_LENGTH = 64
_NAME_RE = re.compile(f"[{NAME_FIRST_CHARACTERS}][{NAME_CHARACTERS}]{{0,{NAME_MAX_LENGTH - 1}}}")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_TARGET_RE = re.compile(rf"{_DOTTED}:{_DOTTED}")


class ConfigError(Exception):
    """The companion configuration is invalid; ``problems`` lists every fault."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"invalid companion configuration: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid companion configuration ({len(self.problems)} problems):\n{lines}"


# -- per-key validators: value -> normalised value, or ValueError(reason) ----


def validate_signal(value: Any) -> int:
    """Accept "SIGTERM", "TERM", "term", 15 or "15"; return the number."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a signal name or number")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(value)
        try:
            return int(signal.Signals(number))
        except ValueError:
            raise ValueError(f"{value!r} is not a signal number on this system") from None
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is None or name.startswith("SIG_"):
            raise ValueError(f"{value!r} is not a signal name (try 'SIGTERM', 'INT' or 15)")
        return int(sig)
    raise ValueError(f"{value!r} is not a signal name or number")


def validate_seconds(value: Any) -> float:
    """A non-negative, finite number of seconds (a numeric string too: Gunicorn's
    own settings accept "10" in a config file, and so must these)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {value!r}") from None
        return validate_seconds(number)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a non-negative number of seconds, got {value!r}")
    return float(value)


def validate_stdout(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a file path or 'inherit', got {value!r}")
    if value in (MERGE_WITH_STDOUT, "stderr"):
        raise ValueError(f"{value!r} is not allowed here; use a file path or 'inherit'")
    return value


def validate_stderr(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a file path, 'stdout' or 'inherit', got {value!r}")
    if value == "stderr":
        raise ValueError("'stderr' is not allowed here; use a file path, 'stdout' or 'inherit'")
    return value


def validate_cwd(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a directory path, got {value!r}")
    return value


def validate_env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a dict of strings, got {type(value).__name__}")
    problems = []
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            problems.append(f"key {key!r} is not a valid environment variable name")
        elif not isinstance(val, str):
            problems.append(f"{key!r} must be a string, got {val!r} (quote it: {str(val)!r})")
        elif "\0" in val:
            problems.append(f"{key!r} contains a NUL byte")
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(sorted(value.items()))


def validate_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'name' must be a non-empty string, got {value!r}")
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"'name' {value!r} may hold only letters, digits and '_.@-' "
            "(starting with a letter or digit, at most 64 characters)"
        )
    return value


def validate_target(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'target' must be a non-empty string, got {value!r}")
    if not _TARGET_RE.fullmatch(value):
        raise ValueError(f"'target' {value!r} must look like 'module:callable'")
    return value


def validate_seconds_or_none(value: Any) -> float | None:
    """Seconds, or None for "derived from another key" (see CompanionSpec)."""
    return None if value is None else validate_seconds(value)


def validate_optional_positive_seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = validate_seconds(value)
    if seconds <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return seconds


def validate_startretries(value: Any) -> int | None:
    """None means retry forever."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0 (or None for no limit), got {value!r}")
    return value


def validate_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be True or False, got {value!r}")
    return value


FLEET = "fleet"


def validate_singleton(value: Any) -> bool | str:
    """False; True or "host" (one instance per machine: a flock); "fleet"
    (one instance across every host that shares companion_lease_url)."""
    if isinstance(value, bool):
        return value
    if value == "host":
        return True
    if value == FLEET:
        return FLEET
    raise ValueError(f'must be True, False, "host" or "fleet", got {value!r}')


def validate_processes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"must be a whole number from 1 to 1000, got {value!r}")
    return value


def validate_command(value: Any) -> tuple[str, ...]:
    """An argv list, or a string split the way a POSIX shell would."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} cannot be split into arguments: {exc}") from None
    elif isinstance(value, (list, tuple)):
        argv = list(value)
        bad = [a for a in argv if not isinstance(a, str) or "\0" in a]
        if bad:
            raise ValueError(f"arguments must be strings, got {bad[0]!r}")
    else:
        raise ValueError(f"must be a list of arguments or a string, got {value!r}")
    if not argv or not argv[0]:
        raise ValueError(f"must name a program to run, got {value!r}")
    if any("\0" in a for a in argv):
        raise ValueError(f"arguments must not contain NUL bytes, got {value!r}")
    return tuple(argv)


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.IGNORECASE)


def _bytes(value: Any) -> int | None:
    """An int, or a string like "512MB", "1.5G", "800k" (units of 1024), as a
    number of bytes; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _SIZE_RE.fullmatch(value)):
        return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    return None


def validate_size(value: Any) -> int | None:
    """Bytes, or a string like "512MB", "1.5G", "800k" (units of 1024)."""
    if value is None:
        return None
    size = _bytes(value)
    if size is None:
        raise ValueError(f"must be a size like '512MB' or a number of bytes, got {value!r}")
    if size <= 0:
        raise ValueError(f"must be more than 0 bytes, got {value!r}")
    return size


def validate_maxbytes(value: Any) -> int:
    """0 (never rotate) or a size like validate_size takes ("0" too: a string
    from a file means the same as the number)."""
    size = _bytes(value)
    if size is None or size < 0:
        raise ValueError(f"must be 0 (never rotate), a number of bytes or a size like "
                         f"'50MB', got {value!r}")
    return size


def validate_backups(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0, got {value!r}")
    return value


def validate_timestamp_format(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a strftime format like '%Y-%m-%d %H:%M:%S', got {value!r}")
    try:
        time.strftime(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid strftime format: {exc}") from None
    return value


def _validate_account(value: Any, kind: str, lookup: Callable[[Any], Any]) -> str | None:
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (str, int)) or value == ""
            or (isinstance(value, int) and value < 0)):
        raise ValueError(f"must be a {kind} name or {kind[0]}id, got {value!r}")
    try:
        lookup(value)
    except KeyError:
        raise ValueError(f"{value!r} does not exist") from None
    return str(value)


def validate_user(value: Any) -> str | None:
    """A user that exists, by name or uid (looked up in the user database)."""
    return _validate_account(value, "user", lookup_user)


def validate_group(value: Any) -> str | None:
    """A group that exists, by name or gid."""
    return _validate_account(value, "group", lookup_group)


# Keys that fall back to a global ``companion_<key>`` setting, with their
# validators and defaults. The Setting classes are generated from this table,
# so the two can never disagree.
DEFAULTABLE_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "stop_signal": (validate_signal, "SIGTERM"),
    "stop_timeout": (validate_seconds, 10.0),
    # None: the companion's own stop_timeout (a restart is as patient as a stop)
    "reload_timeout": (validate_seconds_or_none, None),
    "stop_as_group": (validate_bool, False),
    "startsecs": (validate_seconds, 1.0),
    "restart_delay": (validate_seconds, 1.0),
    "max_restart_delay": (validate_seconds, 60.0),
    "startretries": (validate_startretries, None),
    "stdout": (validate_stdout, INHERIT),
    "stderr": (validate_stderr, INHERIT),
    "stdout_maxbytes": (validate_maxbytes, 0),
    "stdout_backups": (validate_backups, 10),
    "stderr_maxbytes": (validate_maxbytes, 0),
    "stderr_backups": (validate_backups, 10),
    "timestamps": (validate_bool, False),
    "timestamp_format": (validate_timestamp_format, "%Y-%m-%d %H:%M:%S"),
}

OWN_KEYS: dict[str, Callable[[Any], Any]] = {
    "name": validate_name,
    "target": validate_target,
    "command": validate_command,
    "cwd": validate_cwd,
    "env": validate_env,
    "processes": validate_processes,
    "autostart": validate_bool,
    "singleton": validate_singleton,
    "wait_ready": validate_bool,
    "max_lifetime": validate_optional_positive_seconds,
    "max_lifetime_jitter": validate_seconds,
    "max_memory": validate_size,
    "watchdog_timeout": validate_optional_positive_seconds,
    "user": validate_user,
    "group": validate_group,
}
# Config keys whose spec field has another name: ``group`` there is the name
# of a group of instances.
FIELD_OF_KEY = {"group": "unix_group"}

KNOWN_KEYS = tuple(OWN_KEYS) + tuple(DEFAULTABLE_KEYS)
REQUIRED_KEYS = ("name",)


@dataclass(frozen=True)
class CompanionSpec:
    """Everything the manager needs to run one companion; comparable, so a
    reread can tell changed companions from untouched ones."""

    name: str  # the instance's own name: "rq" or, with processes > 1, "rq:0"
    target: str | None = None
    command: tuple[str, ...] | None = None
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0
    # None becomes stop_timeout (__post_init__): a restart, a reread or a HUP
    # change waits as long for the old process as a stop does.
    reload_timeout: float | None = None
    # False: the stop signal goes to the main process only (a pool owns its
    # children and stops them itself); True: to its whole process group.
    stop_as_group: bool = False
    startsecs: float = 1.0
    restart_delay: float = 1.0
    max_restart_delay: float = 60.0
    startretries: int | None = None
    stdout: str = INHERIT
    stderr: str = INHERIT
    stdout_maxbytes: int = 0
    stdout_backups: int = 10
    stderr_maxbytes: int = 0
    stderr_backups: int = 10
    timestamps: bool = False
    timestamp_format: str = "%Y-%m-%d %H:%M:%S"
    group: str = ""  # the configured name; "" means the same as name
    instance: int = 0
    processes: int = 1
    autostart: bool = True
    # True: one instance per machine (a flock); "fleet": one across the fleet
    # (a lease in companion_lease_url's service, see fleet.py)
    singleton: bool | str = False
    wait_ready: bool = False
    max_lifetime: float | None = None
    max_lifetime_jitter: float = 0.0
    max_memory: int | None = None
    watchdog_timeout: float | None = None
    user: str | None = None  # run as this user (name or uid) instead of Gunicorn's
    unix_group: str | None = None  # the ``group`` key: run with this group

    def __post_init__(self):
        if self.reload_timeout is None:
            object.__setattr__(self, "reload_timeout", self.stop_timeout)

    @property
    def host_singleton(self) -> bool:
        """Held single on this machine by a flock (``singleton: True``)."""
        return self.singleton is True

    @property
    def fleet(self) -> bool:
        """Held single across the fleet by a lease (``singleton: "fleet"``)."""
        return self.singleton == FLEET

    @property
    def group_name(self) -> str:
        return self.group or self.name

    @property
    def stop_signal_name(self) -> str:
        return signal.Signals(self.stop_signal).name


def suggest(key: str, known: tuple[str, ...] | list[str]) -> str:
    """' (did you mean 'x'?)' for a close match, else ''."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return f" (did you mean {match[0]!r}?)" if match else ""


def parse_defaults(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Validate the global ``companion_<key>`` defaults; missing ones take the
    built-in default. Returns (defaults by key, problems)."""
    defaults: dict[str, Any] = {}
    problems: list[str] = []
    for key, (validator, builtin) in DEFAULTABLE_KEYS.items():
        raw = values.get(f"companion_{key}", builtin)
        if raw is None:
            raw = builtin
        try:
            defaults[key] = validator(raw)
        except ValueError as exc:
            problems.append(f"companion_{key}: {exc}")
    return defaults, problems


def parse_companions(
    entries: Any, values: Mapping[str, Any] | None = None
) -> tuple[CompanionSpec, ...]:
    """``companion_workers`` plus the ``companion_*`` defaults to specs.

    Raises ConfigError naming every problem found, not just the first.
    """
    defaults, problems = parse_defaults(values or {})
    if entries is None:
        entries = []
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(
            problems + [f"companion_workers must be a list of dicts, got {type(entries).__name__}"]
        )
    memo = _memo.fresh(defaults)
    collected: list[tuple[CompanionSpec, ...]] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        key = memo.key(entry)
        specs = memo.get(key, entry) if key is not None else None
        if specs is not None:
            name = specs[0].group_name
        else:
            fields, entry_problems = _entry_fields(entry, index, defaults)
            problems += entry_problems
            name = fields.get("name")
            if not problems:
                specs = tuple(_instances(fields))
                if key is not None and not entry_problems:
                    memo.keep(key, entry, specs)
        if name is not None:
            if name in first_index:
                problems.append(
                    f"companion_workers[{index}]: duplicate name {name!r} "
                    f"(companion_workers[{first_index[name]}] has it too)"
                )
            else:
                first_index[name] = index
        if specs is not None:
            collected.append(specs)
    if problems:
        raise ConfigError(problems)
    return tuple(spec for specs in collected for spec in specs)


def _entry_fields(entry: Any, index: int, defaults: dict[str, Any]
                  ) -> tuple[dict[str, Any], list[str]]:
    """One ``companion_workers`` entry validated: (spec fields, problems)."""
    where = f"companion_workers[{index}]"
    if not isinstance(entry, Mapping):
        return {}, [f"{where} must be a dict, got {type(entry).__name__}"]
    problems: list[str] = []
    name = entry.get("name")
    if isinstance(name, str) and _NAME_RE.fullmatch(name):
        where = f"companion {name!r}"
    fields: dict[str, Any] = {}
    for key in entry:
        if key not in KNOWN_KEYS:
            problems.append(f"{where}: unknown key {key!r}{suggest(str(key), KNOWN_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in entry:
            problems.append(f"{where}: missing {key!r}")
    if "target" not in entry and "command" not in entry:
        problems.append(f"{where}: missing 'target' (a 'module:callable') or 'command' "
                        "(a program to run)")
    elif "target" in entry and "command" in entry:
        problems.append(f"{where}: has both 'target' and 'command'; use one")
    for key, validator in OWN_KEYS.items():
        if key in entry:
            try:
                fields[FIELD_OF_KEY.get(key, key)] = validator(entry[key])
            except ValueError as exc:
                label = "" if key in ("name", "target") else f"{key} "
                problems.append(f"{where}: {label}{exc}")
    for key, (validator, _) in DEFAULTABLE_KEYS.items():
        if key in entry:
            try:
                fields[key] = validator(entry[key])
            except ValueError as exc:
                problems.append(f"{where}: {key} {exc}")
        elif key in defaults:
            fields[key] = defaults[key]
    return fields, problems


# Keys whose validation asks the world (the user and group databases), not
# just the value: an entry with them is validated on every read.
_WORLD_KEYS = frozenset({"user", "group"})


class _SpecMemo:
    """The specs of the entries of the last config read, so that a reread
    validates only the entries that changed: a reread that changes one
    companion of 200 costs little more than one of 10.

    An entry is found by its ``repr`` (computed in C, and unlike ``==`` it
    tells 1, 1.0 and True apart, which the validators do) and must also
    equal the entry kept (an object whose repr says too little). Kept
    entries are the previous read's own objects: a config is executed
    afresh on every read, so nothing mutates them. Valid for one set of
    defaults; holds only the last read's entries."""

    def __init__(self) -> None:
        self.defaults: str | None = None
        self.last: dict[str, tuple[dict, tuple[CompanionSpec, ...]]] = {}
        self.now: dict[str, tuple[dict, tuple[CompanionSpec, ...]]] = {}

    def fresh(self, defaults: dict[str, Any]) -> _SpecMemo:
        """Start a read with these defaults: what the previous read kept
        stays usable only if its defaults were the same."""
        key = repr(defaults)
        self.last = self.now if key == self.defaults else {}
        self.now = {}
        self.defaults = key
        return self

    @staticmethod
    def key(entry: Any) -> str | None:
        if type(entry) is not dict or not entry.keys().isdisjoint(_WORLD_KEYS):
            return None
        return repr(entry)

    def get(self, key: str, entry: dict) -> tuple[CompanionSpec, ...] | None:
        kept = self.last.get(key)
        if kept is None or kept[0] != entry:
            return None
        self.now[key] = kept
        return kept[1]

    def keep(self, key: str, entry: dict, specs: tuple[CompanionSpec, ...]) -> None:
        self.now[key] = (entry, specs)


# One memo for the process: the master's boot read fills it before the
# manager is forked, so the manager's first reread already reuses it.
_memo = _SpecMemo()


def _instances(fields: dict[str, Any]) -> list[CompanionSpec]:
    """One spec per process: ``processes: 3`` gives rq:0, rq:1 and rq:2."""
    count = fields.get("processes", 1)
    if count == 1:
        return [CompanionSpec(**fields)]
    name = fields["name"]
    return [CompanionSpec(**{**fields, "name": f"{name}:{i}", "group": name, "instance": i})
            for i in range(count)]


# -- fleet singletons -----------------------------------------------------------

DEFAULT_LEASE_TTL = 15.0
# Once SIGKILL is sent, how long the kernel may take to end the process
# group (it frees the memory of a large process first), and a margin for the
# manager's own scheduling delay: a fleet singleton's stop must end this long
# before its lease runs out by the holder's clock.
LEASE_KILL_GRACE = 0.5
LEASE_MARGIN = 0.5


def lease_stop_budget(stop_timeout: float) -> float:
    """How long before its lease's end a fleet singleton must begin stopping
    so that it is gone, SIGKILL included, by then."""
    return stop_timeout + LEASE_KILL_GRACE + LEASE_MARGIN


def validate_lease_ttl(value: Any) -> float:
    seconds = validate_seconds(value)
    if seconds < 1:
        raise ValueError(f"must be at least 1 second, got {value!r}")
    return seconds


# the scheme of companion_lease_url -> (backend module, pip extra, module it needs)
LEASE_SCHEMES = {
    "redis": ("lease_redis", "redis", "redis"),
    "rediss": ("lease_redis", "redis", "redis"),
    "unix": ("lease_redis", "redis", "redis"),
    "postgresql": ("lease_postgres", "postgresql", "psycopg"),
    "postgres": ("lease_postgres", "postgresql", "psycopg"),
}


def lease_scheme_fault(url: str, importable: Callable[[str], bool]) -> str | None:
    """Why ``url`` cannot name a lease service (None: it can). ``importable``
    says whether a client library is installed."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in LEASE_SCHEMES:
        known = ", ".join(f"{s}://" for s in LEASE_SCHEMES)
        return (f"companion_lease_url {redacted(url)!r} has an unknown scheme; use one "
                f"of {known}")
    _, extra, module = LEASE_SCHEMES[scheme.lower()]
    if not importable(module):
        return (f"companion_lease_url is a {scheme}:// URL but the {module!r} client is not "
                f"installed: pip install 'gunicorn-companion[{extra}]'")
    return None


def redacted(url: str) -> str:
    """The URL without a password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def fleet_faults(specs: tuple[CompanionSpec, ...], url: str | None, ttl: float,
                 importable: Callable[[str], bool]) -> list[str]:
    """Every reason the fleet settings cannot work together (pure)."""
    fleet = [s for s in specs if s.fleet]
    problems = []
    if url:
        fault = lease_scheme_fault(url, importable)
        if fault:
            problems.append(fault)
        if not fleet:
            problems.append('companion_lease_url is set but no companion has '
                            '"singleton": "fleet" to use it; remove the setting or make a '
                            'companion a fleet singleton')
    elif fleet:
        names = ", ".join(repr(s.name) for s in fleet)
        problems.append(f'companion {names} {"is a" if len(fleet) == 1 else "are"} fleet '
                        'singleton(s) but companion_lease_url is not set; set it to '
                        '"redis://host:6379/0" or "postgresql://user@host/db"')
    seen = set()
    for spec in fleet:
        if spec.group_name in seen:
            continue
        seen.add(spec.group_name)
        budget = lease_stop_budget(spec.stop_timeout)
        if budget > ttl / 2:
            problems.append(
                f"companion {spec.group_name!r}: stop_timeout {spec.stop_timeout:g}s does not "
                f"fit in companion_lease_ttl {ttl:g}s; lower stop_timeout to at most "
                f"{max(0.0, ttl / 2 - LEASE_KILL_GRACE - LEASE_MARGIN):g}s or raise "
                f"companion_lease_ttl to at least {2 * budget:g}s (a fleet singleton must be "
                f"gone, stop_timeout then SIGKILL, before its lease can expire, starting no "
                f"earlier than half the TTL)")
    return problems
