"""``gunicorn-companion import-supervisor``: supervisord config to companions.

Reads a supervisord configuration (following ``[include]``) and writes a
``companion_workers = [...]`` block for gunicorn.conf.py, one dict per
``[program:x]`` section. Whatever has no equivalent here is written next to
the companion it belongs to (or at the top, for file-level sections) as a
``#`` comment: nothing is dropped silently.

Pure apart from reading the files: ``convert()`` returns the text, ``main()``
prints it. The file is read the way supervisord reads it: an INI file whose
keys are case-insensitive, where ``;`` and ``#`` start a comment at the start
of a line or after whitespace, and whose values may use ``%(name)s``
expansions (``%(ENV_X)s``, ``%(here)s``, ``%(program_name)s``,
``%(process_num)02d``...).
"""

from __future__ import annotations

import argparse
import configparser
import difflib
import glob
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec import (
    INHERIT,
    MERGE_WITH_STDOUT,
    NAME_CHARACTERS,
    NAME_FIRST_CHARACTERS,
    NAME_MAX_LENGTH,
    validate_backups,
    validate_command,
    validate_env,
    validate_maxbytes,
    validate_name,
    validate_processes,
    validate_seconds,
    validate_signal,
    validate_startretries,
)

PROG = "gunicorn-companion import-supervisor"

# The keys a converted companion may have, in the order they are written.
OUTPUT_KEYS = (
    "name",
    "command",
    "cwd",
    "user",
    "env",
    "processes",
    "autostart",
    "startsecs",
    "startretries",
    "stop_signal",
    "stop_timeout",
    "stop_as_group",
    "stdout",
    "stdout_maxbytes",
    "stdout_backups",
    "stderr",
    "stderr_maxbytes",
    "stderr_backups",
)

# [program:x] keys that have no equivalent, with the reason given in the comment.
NOT_CARRIED_OVER = {
    "umask": "companions inherit Gunicorn's umask",
    "priority": "companions start in the order they are listed",
    "exitcodes": "companions have no expected exit codes: one that exits is restarted",
    "serverurl": "there is no supervisord XML-RPC server for the program to call",
    "stdout_capture_maxbytes": "there is no capture mode or event listener",
    "stderr_capture_maxbytes": "there is no capture mode or event listener",
    "stdout_events_enabled": "there are no log events or event listeners",
    "stderr_events_enabled": "there are no log events or event listeners",
    "stdout_syslog": "output cannot go to syslog yet",
    "stderr_syslog": "output cannot go to syslog yet",
}

# [program:x] keys this converter reads (or explains) itself.
HANDLED_KEYS = (
    "command",
    "process_name",
    "numprocs",
    "numprocs_start",
    "directory",
    "user",
    "environment",
    "autostart",
    "autorestart",
    "startsecs",
    "startretries",
    "stopsignal",
    "stopwaitsecs",
    "stopasgroup",
    "killasgroup",
    "redirect_stderr",
    "stdout_logfile",
    "stdout_logfile_maxbytes",
    "stdout_logfile_backups",
    "stderr_logfile",
    "stderr_logfile_maxbytes",
    "stderr_logfile_backups",
)

PROGRAM_KEYS = HANDLED_KEYS + tuple(NOT_CARRIED_OVER)

# File-level sections: what becomes of them, for the comments at the top.
SERVER_SECTIONS = {
    "supervisord": "settings of supervisord itself",
    "unix_http_server": "supervisord's control server; see companion_control_socket",
    "inet_http_server": "supervisord's control server; see companion_control_socket",
    "supervisorctl": "settings of supervisorctl; use `gunicorn-companion -s SOCKET status`",
}

# Values of stdout/stderr that the spec reads as a destination, not a file.
_OUTPUT_WORDS = (INHERIT, MERGE_WITH_STDOUT, "stderr")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")

# %% or %(name)<printf spec>; a lone '%' matches the empty alternative.
_EXPANSION_RE = re.compile(
    r"%(?:%|\((?P<name>[^()]*)\)(?P<spec>[#0 +-]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa])?|)"
)
_NAME_CHAR_RE = re.compile(f"[^{NAME_CHARACTERS}]")
_NAME_LEAD_RE = re.compile(f"^[^{NAME_FIRST_CHARACTERS}]+")


class SupervisorConfigError(Exception):
    """A file could not be read or parsed; the message is one line naming it."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


# -- small parsers, each pinned by table tests -----------------------------------


def parse_bool(value: str) -> bool:
    """supervisord's booleans: true/false, yes/no, on/off, 1/0 (any case)."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false, yes/no, on/off, 1/0)")


def parse_count(value: str) -> int:
    """supervisord's whole numbers, as text; the range is the spec validator's."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{value!r} is not a whole number >= 0")
    return int(text)


# The value parsers below take supervisord's text and leave every rule to the
# validators of spec.py, so what they accept is exactly what a companion
# accepts: the output can never hold a value the config would then refuse.


def _seconds(value: str) -> int | float:
    """A number of seconds, written back as an int when it was written as one."""
    seconds = validate_seconds(value)
    text = value.strip()
    return int(seconds) if text.isascii() and text.isdigit() else seconds


def _signal_name(value: str) -> str:
    """"TERM", "SIGTERM", "term" or "15" -> "SIGTERM"."""
    return signal.Signals(validate_signal(value)).name


def _startretries(value: str) -> int | None:
    return validate_startretries(parse_count(value))


def _backups(value: str) -> int:
    return validate_backups(parse_count(value))


def parse_environment(value: str) -> dict[str, str]:
    """supervisord's ``environment=``: ``KEY="value",KEY2='v,2',KEY3=plain``.

    Pairs are separated by commas outside quotes. Double quotes allow ``\\"``
    and ``\\\\`` escapes, single quotes none, and a backslash outside quotes
    escapes the next character (POSIX shell rules; a trailing one, escaping
    nothing, is kept as it is). Whitespace around an unquoted key or value is
    dropped.
    """
    pairs: dict[str, str] = {}
    pos, end = 0, len(value)
    while pos < end:
        while pos < end and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        if pos >= end:
            break
        key, pos, stop = _env_word(value, pos, "=,")
        if stop != "=":
            raise ValueError(f"expected KEY=VALUE, got {key!r}")
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"{key!r} is not a variable name")
        val, pos, _ = _env_word(value, pos + 1, ",")
        pairs[key] = val
    return pairs


def _env_word(text: str, pos: int, stops: str) -> tuple[str, int, str]:
    """Read from ``pos`` up to an unquoted character of ``stops`` (or the end).

    Returns (the word, the stop's position, the stop or ""), trimming the
    unquoted whitespace at both ends.
    """
    chars: list[tuple[str, bool]] = []  # (character, quoted)
    end = len(text)
    while pos < end:
        c = text[pos]
        if c in stops:
            break
        if c in "\"'":
            close = pos + 1
            while close < end and text[close] != c:
                escaped = close + 1 < end and text[close + 1] in '"\\'
                if c == '"' and text[close] == "\\" and escaped:
                    close += 1
                chars.append((text[close], True))
                close += 1
            if close >= end:
                raise ValueError(f"no closing quotation ({c}) in {text!r}")
            pos = close + 1
            continue
        if c == "\\" and pos + 1 < end:
            chars.append((text[pos + 1], True))
            pos += 2
            continue
        chars.append((c, False))
        pos += 1
    while chars and not chars[0][1] and chars[0][0].isspace():
        chars.pop(0)
    while chars and not chars[-1][1] and chars[-1][0].isspace():
        chars.pop()
    stop = text[pos] if pos < end else ""
    return "".join(c for c, _ in chars), pos, stop


def sanitize_name(name: str) -> str:
    """A program name to a valid companion name (spec's rules: letters, digits
    and '_.@-', starting with a letter or digit, at most 64 characters)."""
    cleaned = _NAME_LEAD_RE.sub("", _NAME_CHAR_RE.sub("_", name))[:NAME_MAX_LENGTH]
    return validate_name(cleaned or "program")


# -- %(name)s expansions -----------------------------------------------------------


@dataclass
class Expander:
    """Expands supervisord's ``%(name)s`` strings, keeping whatever it cannot
    resolve as literal text and remembering it for a comment."""

    names: dict[str, Any]
    env: Mapping[str, str]
    per_instance: dict[str, Any] = field(default_factory=dict)
    unresolved: list[tuple[str, str, str]] = field(default_factory=list)  # key, text, why
    instance_keys: list[str] = field(default_factory=list)
    env_used: list[str] = field(default_factory=list)

    def expand(self, text: str, key: str) -> str:
        return _EXPANSION_RE.sub(lambda match: self._one(match, key), text)

    def _one(self, match: re.Match[str], key: str) -> str:
        text = match.group(0)
        if text == "%%":
            return "%"
        name, spec = match.group("name"), match.group("spec")
        if name is None or spec is None:
            self._keep(key, text, "is not a complete %(name)s expansion")
            return text
        if name in self.per_instance:
            if key not in self.instance_keys:
                self.instance_keys.append(key)
            return text
        if name.startswith("ENV_"):
            variable = name[4:]
            if variable not in self.env:
                self._keep(key, text, f"{variable} is not set in the environment")
                return text
            value: Any = self.env[variable]
            if variable not in self.env_used:
                self.env_used.append(variable)
        elif name in self.names:
            value = self.names[name]
        else:
            self._keep(key, text, "names nothing supervisord can expand here")
            return text
        try:
            return ("%" + spec) % (value,)
        except (TypeError, ValueError):
            self._keep(key, text, f"cannot format {value!r} that way")
            return text

    def _keep(self, key: str, text: str, why: str) -> None:
        entry = (key, text, why)
        if entry not in self.unresolved:
            self.unresolved.append(entry)


# -- reading the files ---------------------------------------------------------------


@dataclass
class Section:
    header: str
    file: str  # absolute path of the file that defined it (last one, if merged)
    shown: str  # that file as the header comment names it
    values: dict[str, str]
    also_in: list[str] = field(default_factory=list)  # display names of other files
    repeated_in: list[str] = field(default_factory=list)  # files with it more than once


@dataclass
class Config:
    sections: dict[str, Section]
    files: list[str]  # display names, in the order read
    notes: list[str]  # file-level comments


class _Reader:
    def __init__(self, path: str, environ: Mapping[str, str]):
        self.given = path
        self.environ = environ
        self.sections: dict[str, Section] = {}
        self.files: list[str] = []
        self.notes: list[str] = []
        self.read: set[str] = set()

    def display(self, absolute: str) -> str:
        if os.path.isabs(self.given):
            return absolute
        return os.path.relpath(absolute)

    def run(self) -> Config:
        absolute = os.path.abspath(self.given)
        self.read_file(absolute, self.given, [])
        return Config(self.sections, self.files, self.notes)

    def read_file(self, absolute: str, shown: str, stack: list[str]) -> None:
        real = os.path.realpath(absolute)
        self.read.add(real)
        self.files.append(shown)
        parser, repeated = _parse(absolute, shown)
        for header in parser.sections():
            values = dict(parser.items(header, raw=True))
            if header in self.sections:
                section = self.sections[header]
                section.also_in.append(shown)
                section.values.update(values)
                section.file = absolute
                section.shown = shown
            else:
                section = self.sections[header] = Section(header, absolute, shown, values)
            if header in repeated:
                # configparser merges a repeated section silently, the last
                # value of a key winning: say so, or the others are lost unseen
                section.repeated_in.append(shown)
        if parser.has_section("include"):
            self.follow_includes(parser, absolute, shown, stack + [real])

    def follow_includes(
        self, parser: configparser.RawConfigParser, absolute: str, shown: str, stack: list[str]
    ) -> None:
        if not parser.has_option("include", "files"):
            self.notes.append(f"[include] in {shown} has no files= setting; nothing included")
            return
        here = os.path.dirname(absolute)
        expander = Expander({"here": here}, self.environ)
        patterns = expander.expand(parser.get("include", "files", raw=True), "files").split()
        for _key, text, why in expander.unresolved:
            self.notes.append(f"[include] in {shown}: {text} left as is ({why})")
        for pattern in patterns:
            matches = sorted(glob.glob(os.path.join(here, pattern)))
            if not matches:
                self.notes.append(f"[include] in {shown}: {pattern!r} matches no file")
            for match in matches:
                match = os.path.abspath(match)
                real = os.path.realpath(match)
                if real in stack:
                    self.notes.append(
                        f"[include] in {shown}: include loop: {self.display(match)} "
                        "is already being read; not read again"
                    )
                elif real in self.read:
                    self.notes.append(
                        f"[include] in {shown}: {self.display(match)} was already read; "
                        "not read again"
                    )
                elif os.path.isdir(match):
                    self.notes.append(
                        f"[include] in {shown}: {self.display(match)} is a directory; skipped"
                    )
                else:
                    self.read_file(match, self.display(match), stack)


def _parse(absolute: str, shown: str) -> tuple[configparser.RawConfigParser, set[str]]:
    """The parsed file, and the headers of the sections it has more than once."""
    try:
        with open(absolute, encoding="utf-8") as fp:
            text = fp.read()
    except FileNotFoundError:
        raise SupervisorConfigError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise SupervisorConfigError(f"{shown}: is a directory, not a file") from None
    except PermissionError:
        raise SupervisorConfigError(f"{shown}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise SupervisorConfigError(f"{shown}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise SupervisorConfigError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    headers = _check_section_headers(text, shown)
    # Like supervisord's own parser: no interpolation (it expands %(...)s
    # itself), inline comments after whitespace, repeated sections merged.
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), strict=False, default_section="DEFAULT"
    )
    try:
        parser.read_string(text, source=shown)
    except configparser.MissingSectionHeaderError as exc:
        raise SupervisorConfigError(
            f"{shown}, line {exc.lineno}: text before the first [section] header: "
            f"{_one_line(exc.line.strip())}"
        ) from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0]
        more = f" (and {len(exc.errors) - 1} more bad lines)" if len(exc.errors) > 1 else ""
        raise SupervisorConfigError(
            f"{shown}, line {lineno}: not a 'key = value' line: {_one_line(line)}{more}"
        ) from None
    except configparser.Error as exc:
        raise SupervisorConfigError(f"{shown}: {_one_line(str(exc))}") from None
    return parser, {h for h in headers if headers.count(h) > 1}


def _check_section_headers(text: str, shown: str) -> list[str]:
    """Reject a malformed ``[section`` line that configparser would otherwise
    take for a key; the header is then read the way configparser reads it.
    Returns the headers, in order."""
    headers = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.startswith("["):
            continue
        content = re.split(r"\s[;#]", line, maxsplit=1)[0].strip()
        match = configparser.RawConfigParser.SECTCRE.match(content)
        if match is None:
            raise SupervisorConfigError(
                f"{shown}, line {lineno}: bad section header: {_one_line(line.strip())}"
            )
        kind, colon, name = match.group("header").partition(":")
        if colon and not name.strip():
            raise SupervisorConfigError(
                f"{shown}, line {lineno}: section [{kind}:] has no name"
            )
        headers.append(match.group("header"))
    return headers


# -- one program to one companion -----------------------------------------------------


@dataclass
class Companion:
    header: str
    origin: str  # the file it came from, as shown
    fields: dict[str, Any]
    notes: list[str]


# What a converter found: companion fields, and notes for the comment above it.
Found = tuple[dict[str, Any], list[str]]


@dataclass
class _Program:
    """One [program:x] section being converted: what the converters read.

    Converters return what they found rather than adding to shared lists; the
    few facts later keys depend on (numprocs, the environment) are set here by
    the converter of their key, which comes first in the table.
    """

    section: Section
    program: str
    name: str
    group: str | None
    expander: Expander
    global_env: Mapping[str, str]
    base_env: Mapping[str, str]
    numprocs: int = 1
    start: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, str]:
        return self.section.values

    def expanded(self, key: str) -> str | None:
        value = self.values.get(key)
        return None if value is None else self.expander.expand(value, key)

    def parsed(self, key: str, parse: Callable[[str], Any]) -> tuple[Any, list[str]]:
        """(value, []), or (None, [why it is not carried over]); (None, []) if absent."""
        value = self.expanded(key)
        if value is None:
            return None, []
        try:
            return parse(value), []
        except ValueError as exc:
            return None, [f"{key}={_one_line(value)}: {exc}; not carried over"]


def _names(p: _Program) -> Found:
    notes = []
    if p.name != p.program:
        notes.append(f"name: {p.program!r} is not a valid companion name; renamed to {p.name!r}")
    if p.group:
        notes.append(
            f"was in supervisord's [group:{p.group}]; companions have no groups: "
            "control it by its own name"
        )
    return {}, notes


def _numprocs(p: _Program) -> Found:
    # First: it decides whether %(process_num)d can be resolved.
    numprocs, notes = p.parsed("numprocs", parse_count)
    if numprocs == 0:
        notes.append("numprocs=0: supervisord needs at least 1; taken as 1")
    elif numprocs is not None:
        try:
            validate_processes(numprocs)
        except ValueError as exc:
            notes.append(f"numprocs={numprocs}: {exc}; taken as 1")
            numprocs = 1
    p.numprocs = numprocs or 1
    start, more = p.parsed("numprocs_start", parse_count)
    p.start = start or 0
    if p.numprocs > 1:
        p.expander.per_instance["process_num"] = None
    else:
        p.expander.names["process_num"] = p.start
    p.expander.names["numprocs"] = p.numprocs
    return {}, notes + more


def _environment(p: _Program) -> Found:
    # environment= is expanded with supervisord's environment only; the
    # program's own variables then join the ENV_ expansions of its other keys
    # (as supervisord 4.2 does).
    env = dict(p.global_env)
    notes = []
    text = p.expanded("environment")
    if text is not None:
        try:
            own = parse_environment(text)
            validate_env(own)
        except ValueError as exc:
            notes.append(f"environment={_one_line(text)}: {exc}; not carried over")
        else:
            env.update(own)
    p.env = env
    p.expander.env = {**p.base_env, **env}
    return ({"env": env} if env else {}), notes


def _command(p: _Program) -> Found:
    command = p.expanded("command")
    if command is None:
        return {}, ["no command= in this section: supervisord would refuse it; add one"]
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return {}, [f"command={_one_line(command)} cannot be split: {exc}; fix it by hand"]
    if not argv:
        return {}, ["command= is empty; add one"]
    try:
        validate_command(argv)
    except ValueError as exc:
        return {}, [f"command={_one_line(command)}: {exc}; fix it by hand"]
    notes = []
    if _runs_gunicorn(argv):
        notes.append(
            "this program runs Gunicorn itself: if it is the Gunicorn these companions "
            "will run under, leave this entry out"
        )
    return {"command": argv}, notes


def _directory(p: _Program) -> Found:
    directory = p.expanded("directory")
    if directory is None:
        return {}, []
    if not directory:
        return {}, ["directory= is empty; not carried over"]
    return {"cwd": directory}, []


def _user(p: _Program) -> Found:
    user = p.values.get("user")
    if user is None:
        return {}, []
    if not user.strip():
        return {}, ["user= is empty; not carried over"]
    return {"user": user.strip()}, [
        f"user={_one_line(user)}: switching users needs Gunicorn started as "
        "root; the key may be left out when Gunicorn's own user is this one"
    ]


def _instances(p: _Program) -> Found:
    fields, notes = {}, []
    if p.numprocs > 1:
        fields["processes"] = p.numprocs
        if p.start:
            notes.append(
                f"numprocs_start={p.start}: instance numbers (GUNICORN_COMPANION_INSTANCE) "
                "start at 0 here"
            )
    elif p.values.get("numprocs_start") is not None and p.start:
        notes.append(f"numprocs_start={p.start}: %(process_num)d was taken as {p.start}")
    process_name = p.values.get("process_name")
    if process_name is not None and process_name.strip() != "%(program_name)s":
        if p.numprocs > 1:
            named = f"the instances are named {p.name}:0 to {p.name}:{p.numprocs - 1}"
        else:
            named = f"the companion is named {p.name!r}"
        notes.append(f"process_name={_one_line(process_name)}: not carried over; {named}")
    return fields, notes


def _key(key: str, out_key: str, parse: Callable[[str], Any]) -> Callable[[_Program], Found]:
    """A converter for a key that maps to one companion key."""

    def convert(p: _Program) -> Found:
        value, notes = p.parsed(key, parse)
        return ({} if value is None else {out_key: value}), notes

    return convert


def _stop_as_group(p: _Program) -> Found:
    # supervisord: stopasgroup sends the stop signal to the whole group (and
    # implies killasgroup); killasgroup only sends the final SIGKILL there,
    # which every companion's stop does here
    stopasgroup, notes = p.parsed("stopasgroup", parse_bool)
    killasgroup, more = p.parsed("killasgroup", parse_bool)
    notes += more
    if killasgroup is not None and not stopasgroup:
        notes.append(
            f"killasgroup={_one_line(p.values['killasgroup'])}: not carried over; SIGKILL at "
            "stop_timeout always goes to the companion's whole process group"
        )
    return ({"stop_as_group": True} if stopasgroup else {}), notes


def _autorestart(p: _Program) -> Found:
    autorestart = p.expanded("autorestart")
    if autorestart is None:
        return {}, []
    text = autorestart.strip().lower()
    if text == "unexpected" or text in _TRUE:
        return {}, []  # companions are restarted whenever they exit
    if text in _FALSE:
        return {}, [
            f"autorestart={_one_line(autorestart)}: not carried over; "
            "companions are always restarted when they exit"
        ]
    return {}, [
        f"autorestart={_one_line(autorestart)}: not true, false or unexpected; "
        "not carried over (companions are always restarted when they exit)"
    ]


def _output(p: _Program) -> Found:
    redirect, notes = p.parsed("redirect_stderr", parse_bool)
    fields, more = _logfile(p, "stdout")
    notes += more
    if not redirect:
        found, more = _logfile(p, "stderr")
        return {**fields, **found}, notes + more
    fields["stderr"] = MERGE_WITH_STDOUT
    for key in ("stderr_logfile", "stderr_logfile_maxbytes", "stderr_logfile_backups"):
        if key in p.values:
            notes.append(
                f"{key}={_one_line(p.values[key])}: ignored, as supervisord does, "
                "because redirect_stderr is true"
            )
    return fields, notes


def _logfile(p: _Program, stream: str) -> Found:
    key = f"{stream}_logfile"
    fields: dict[str, Any] = {}
    notes: list[str] = []
    path = p.expanded(key)
    if path is not None:
        special = path.strip()
        if special.upper() == "NONE" or special == "/dev/null":
            notes.append(
                f"{key}={_one_line(path)}: discarding output has no equivalent yet; "
                f"left out ({stream} goes where Gunicorn's goes)"
            )
        elif special.upper() == "AUTO":
            notes.append(
                f"{key}=AUTO: supervisord's automatic log files have no equivalent; "
                f"left out ({stream} goes where Gunicorn's goes)"
            )
        elif special.lower() == "syslog":
            notes.append(f"{key}=syslog: output cannot go to syslog yet; left out")
        elif not special:
            notes.append(f"{key}= is empty; left out")
        else:
            if not os.path.isabs(path):
                notes.append(
                    f"{key}={_one_line(path)} is relative: supervisord took it from its own "
                    "working directory, companions take it from their cwd"
                )
            if path in _OUTPUT_WORDS:
                # a file of that name to supervisord, a destination to the spec
                notes.append(f"{key}={path}: written as './{path}' ({path!r} alone is not a "
                             "file to companions)")
                path = os.path.join(".", path)
            fields[stream] = path
    for suffix, parse in (("maxbytes", validate_maxbytes), ("backups", _backups)):
        option = f"{key}_{suffix}"
        if option not in p.values:
            continue
        value, more = p.parsed(option, parse)
        notes += more
        if value is None:
            continue
        if stream not in fields:
            notes.append(
                f"{option}={_one_line(p.values[option])}: ignored, there is no {stream} file"
            )
            continue
        fields[f"{stream}_{suffix}"] = value
    return fields, notes


def _other_keys(p: _Program) -> Found:
    notes = []
    for key, value in p.values.items():
        if key in NOT_CARRIED_OVER:
            notes.append(f"{key}={_one_line(value)}: not carried over; {NOT_CARRIED_OVER[key]}")
        elif key not in HANDLED_KEYS:
            hint = difflib.get_close_matches(key, PROGRAM_KEYS, n=1, cutoff=0.7)
            did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
            notes.append(
                f"{key}={_one_line(value)}: not a supervisord program option{did_you_mean}; "
                "not carried over"
            )
    return {}, notes


def _expansions(p: _Program) -> Found:
    """Last: what the expansions of every key above could not resolve."""
    notes = []
    expander = p.expander
    if expander.instance_keys:
        keys = ", ".join(expander.instance_keys)
        notes.append(
            f"%(process_num)d in {keys} is different for each of the {p.numprocs} instances "
            "and is left as is: each instance now gets GUNICORN_COMPANION_INSTANCE (0 to "
            f"{p.numprocs - 1}) in its environment instead"
        )
        shared = [k for k in expander.instance_keys if k.endswith("_logfile")]
        if shared:
            notes.append(
                f"the {p.numprocs} instances now write to one file for {', '.join(shared)}: "
                "edit the path"
            )
    for key, text, why in expander.unresolved:
        notes.append(f"unresolved: {text} in {key} left as is ({why})")
    baked = [v for v in expander.env_used if v not in p.env]  # not from the config itself
    if baked:
        used = ", ".join(baked)
        notes.append(f"%(ENV_...)s resolved from the environment at conversion time: {used}")
    for shown in p.section.repeated_in:
        notes.append(
            f"[{p.section.header}] appears more than once in {shown}; values merged, "
            "the last one wins"
        )
    if p.section.also_in:
        notes.append(
            f"[{p.section.header}] is defined in more than one file; values merged, "
            "the last file read wins"
        )
    return {}, notes


# The table: each converter reads its keys of a [program:x] section, in this
# order, which is the order of the notes above the companion.
CONVERTERS: tuple[Callable[[_Program], Found], ...] = (
    _names,
    _numprocs,
    _environment,
    _command,
    _directory,
    _user,
    _instances,
    _key("autostart", "autostart", parse_bool),
    _key("startsecs", "startsecs", _seconds),
    _key("startretries", "startretries", _startretries),
    _key("stopsignal", "stop_signal", _signal_name),
    _key("stopwaitsecs", "stop_timeout", _seconds),
    _stop_as_group,
    _autorestart,
    _output,
    _other_keys,
    _expansions,
)


def _program_companion(
    section: Section,
    program: str,
    name: str,
    group: str | None,
    base_env: Mapping[str, str],
    global_env: Mapping[str, str],
) -> Companion:
    names: dict[str, Any] = {
        "program_name": program,
        "group_name": group or program,
        "here": os.path.dirname(section.file),
        "host_node_name": socket.gethostname(),
    }
    p = _Program(section, program, name, group, Expander(names, dict(base_env)), global_env,
                 base_env)
    fields: dict[str, Any] = {"name": name}
    notes: list[str] = []
    for convert in CONVERTERS:
        found, more = convert(p)
        fields.update(found)
        notes += more
    return Companion(section.header, section.shown, fields, notes)


def _runs_gunicorn(argv: list[str]) -> bool:
    program = os.path.basename(argv[0])
    if program == "gunicorn":
        return True
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "gunicorn"


# -- the whole file ---------------------------------------------------------------


def convert(path: str, environ: Mapping[str, str] | None = None) -> str:
    """The ``companion_workers = [...]`` text for the supervisord config at ``path``.

    Raises SupervisorConfigError (a one-line message naming the file) when a
    file cannot be read or parsed.
    """
    environ = os.environ if environ is None else environ
    config = _Reader(path, environ).run()
    notes = list(config.notes)

    # [supervisord] environment= reaches every program, and its variables
    # join the %(ENV_X)s expansions (supervisord 4.2 and later).
    global_env: dict[str, str] = {}
    daemon = config.sections.get("supervisord")
    if daemon is not None and "environment" in daemon.values:
        expander = Expander({"here": os.path.dirname(daemon.file)}, dict(environ))
        text = expander.expand(daemon.values["environment"], "environment")
        try:
            global_env = parse_environment(text)
        except ValueError as exc:
            notes.append(f"[supervisord] environment={_one_line(text)}: {exc}; not carried over")
        for _key, literal, why in expander.unresolved:
            notes.append(f"[supervisord] environment: {literal} left as is ({why})")
        if global_env:
            notes.append(
                "[supervisord] environment= is copied into every companion's env: "
                + ", ".join(global_env)
            )
    base_env = {**environ, **global_env}

    groups: dict[str, str] = {}  # program -> group
    programs = [h[len("program:"):] for h in config.sections if h.startswith("program:")]
    for header, section in config.sections.items():
        kind, _, rest = header.partition(":")
        if header in SERVER_SECTIONS:
            keys = ", ".join(k for k in section.values if k != "environment")
            if keys:
                notes.append(f"[{header}] {keys}: not carried over ({SERVER_SECTIONS[header]})")
        elif header == "include":
            pass  # followed while reading
        elif kind == "group" and rest:
            members = [p.strip() for p in section.values.get("programs", "").split(",")]
            members = [p for p in members if p]
            for member in members:
                groups.setdefault(member, rest)
            missing = [m for m in members if m not in programs]
            extra = [k for k in section.values if k != "programs"]
            settings = "".join(f", {k}={section.values[k]}" for k in extra)
            text = (
                f"[{header}] programs={','.join(members)}{settings}: not carried over "
                "(companions have no groups; its programs are converted one by one)"
            )
            if missing:
                text += f"; no [program:x] section for {', '.join(missing)}"
            notes.append(_one_line(text))
        elif kind == "program" and rest:
            pass
        elif kind == "eventlistener" and rest:
            notes.append(
                f"[{header}] command={_one_line(section.values.get('command', ''))}: "
                "event listeners have no equivalent; not carried over"
            )
        elif kind == "fcgi-program" and rest:
            notes.append(
                f"[{header}] command={_one_line(section.values.get('command', ''))}: "
                "FastCGI programs (a socket shared by supervisord) have no equivalent; "
                "not carried over"
            )
        elif kind == "rpcinterface" and rest:
            notes.append(f"[{header}]: supervisord's RPC interface; not carried over")
        else:
            notes.append(f"[{header}]: not a supervisord section; not carried over")

    companions: list[Companion] = []
    taken: set[str] = set()
    for header, section in config.sections.items():
        if not header.startswith("program:"):
            continue
        program = header[len("program:"):]
        name = sanitize_name(program)
        if name in taken:
            number = 2
            while f"{name[: NAME_MAX_LENGTH - 4]}-{number}" in taken:
                number += 1
            name = validate_name(f"{name[: NAME_MAX_LENGTH - 4]}-{number}")
        taken.add(name)
        companions.append(
            _program_companion(section, program, name, groups.get(program), base_env, global_env)
        )
    if any(_default_rotation(c.fields) for c in companions):
        notes.append(
            "supervisord rotates a log file at 50MB keeping 10 backups unless told otherwise; "
            "that default is not written out below: add stdout_maxbytes/stderr_maxbytes "
            "(and _backups) to keep it"
        )
    return _render(config.files, notes, companions)


def _default_rotation(fields: Mapping[str, Any]) -> bool:
    """Has a log file whose rotation supervisord would have chosen by default."""
    stdout = "stdout" in fields and "stdout_maxbytes" not in fields
    stderr = fields.get("stderr", "stdout") != "stdout" and "stderr_maxbytes" not in fields
    return stdout or stderr


def _render(files: list[str], notes: list[str], companions: list[Companion]) -> str:
    lines = [f"# Converted by `{PROG}` from {_one_line(files[0])}"]
    for included in files[1:]:
        lines.append(f"#   including {_one_line(included)}")
    lines.append("# Review every note below before using this in gunicorn.conf.py.")
    for note in notes:
        lines.append(f"# {_one_line(note)}")
    if not companions:
        lines.append("# No [program:x] sections found.")
    lines.append("companion_workers = [")
    for companion in companions:
        lines.append(f"    # [{_one_line(companion.header)}] from {_one_line(companion.origin)}")
        for note in companion.notes:
            lines.append(f"    # {_one_line(note)}")
        lines.append("    {")
        for key in OUTPUT_KEYS:
            if key in companion.fields:
                lines.append(f"        {key!r}: {_format(companion.fields[key])},")
        lines.append("    },")
    lines.append("]")
    return "\n".join(lines) + "\n"


def _format(value: Any) -> str:
    if isinstance(value, dict):
        items = "".join(f"            {k!r}: {v!r},\n" for k, v in value.items())
        return "{\n" + items + "        }"
    return repr(value)


def _one_line(text: str) -> str:
    """Text safe inside a ``#`` comment: control characters (newlines above
    all) escaped, so a comment can never end early."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


# -- command line -----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print a companion_workers block for gunicorn.conf.py converted from "
        "the [program:x] sections of a supervisord configuration.",
    )
    parser.add_argument(
        "file", metavar="FILE", help="supervisord.conf (its [include]s are read too)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        text = convert(args.file)
    except SupervisorConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
