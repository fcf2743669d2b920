"""``gunicorn-companion import-procfile [Procfile]``: print ``companion_workers``
for the processes of a honcho, foreman or Heroku Procfile (Frappe's ``bench
start`` runs one).

Each process becomes a ``command`` companion. ``$VAR`` references are left
to a shell, as honcho and foreman leave them: a command that uses one (or
any other shell syntax) runs under ``/bin/sh -c``, and the values of a
``.env`` file next to the Procfile go into each companion's ``env``, which
is the environment honcho gives that shell. Output redirections
(``1>> logs/worker.log 2>> logs/worker.error.log``) become ``stdout`` and
``stderr``; the ``web`` process is left out, since Gunicorn is the web
server; whatever cannot be carried over is a comment.

Parsing is pure (text in, records out); only ``main`` reads files.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass, field

from .supervisor_import import _one_line, sanitize_name

PROG = "gunicorn-companion import-procfile"

# honcho's and foreman's rule: a name, a colon, the command.
_LINE_RE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_ENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
# Anything that needs a shell to mean what it says.
_SHELL_SYNTAX = set("$`|&;<>*?~(){}[]")
# An output redirection at a word's start: fd (none, 1, 2 or &), mode, target.
_REDIRECT_RE = re.compile(r"(?:^|(?<=\s))(?P<fd>[12&]?)(?P<mode>>>|>)\s*(?P<target>&?[^\s;&|<>]+)")
_ASSIGNMENTS_RE = re.compile(r"^((?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*)(.*)$", re.S)
WEB_PROCESS = "web"
ENV_NAME = "procfile_env"  # the variable holding the .env values in the output


class _Name(str):
    """Rendered bare (a variable), not quoted."""

    def __repr__(self) -> str:
        return str(self)


class ProcfileError(Exception):
    """The Procfile or .env cannot be read; the message names it."""


@dataclass
class Process:
    name: str
    command: str
    line: int


@dataclass
class Converted:
    name: str
    fields: dict
    notes: list[str] = field(default_factory=list)


def parse_procfile(text: str) -> tuple[list[Process], list[str]]:
    """The processes of a Procfile, and a note for each line that is not one."""
    processes, notes, seen = [], [], set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if not match:
            notes.append(f"line {number} is not 'name: command', left out: {line}")
            continue
        name, command = match.groups()
        if name in seen:
            notes.append(f"line {number}: {name!r} again, left out (honcho runs the first)")
            continue
        seen.add(name)
        processes.append(Process(name, command.strip(), number))
    return processes, notes


def parse_env(text: str) -> tuple[dict[str, str], list[str]]:
    """A .env file as honcho reads it: KEY=VALUE lines, quotes removed."""
    values, notes = {}, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE_RE.match(line)
        if not match:
            notes.append(f".env line {number} is not KEY=VALUE, left out: {line}")
            continue
        key, value = match.groups()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if raw.strip().split("=", 1)[1].strip()[0] == '"':
                value = value.replace("\\n", "\n")
        values[key] = value
    return values, notes


def convert_process(process: Process, env: dict[str, str]) -> Converted:
    """One Procfile process as a companion (pure)."""
    name = sanitize_name(process.name)
    notes = [] if name == process.name else [f"renamed from {process.name!r}"]
    fields: dict = {"name": name}
    rest, redirects, leftover = take_redirections(process.command)
    if any(ch in rest for ch in ";&|"):
        # in `a && b > f` the file is b's alone: the shell keeps them all
        rest, redirects, leftover = process.command, [], []
    notes += leftover
    for key, path, mode in redirects:
        fields[key] = path
        if mode == ">" and path != "stdout":
            notes.append(f"{key}: '>' emptied {path} at each start; companions append to it")
    fields["command"] = command_for(rest)
    if env:
        fields["env"] = _Name(ENV_NAME)
    return Converted(name, fields, notes)


def command_for(text: str) -> list[str]:
    """An argv, or ``/bin/sh -c TEXT`` for anything a shell must read
    ($VAR, pipes, globs, quotes it would remove...)."""
    if not any(ch in _SHELL_SYNTAX for ch in text):
        try:
            return shlex.split(text)
        except ValueError:
            pass  # unbalanced quotes: the shell says what it makes of them
    if any(ch in text for ch in ";&|"):
        return ["/bin/sh", "-c", text]
    # `exec`: the shell becomes the process, so stop signals reach it; after
    # the leading VAR=value words, which `exec` would take for the program
    assignments, program = _ASSIGNMENTS_RE.match(text).groups()
    return ["/bin/sh", "-c", f"{assignments}exec {program}"]


def take_redirections(command: str) -> tuple[str, list[tuple[str, str, str]], list[str]]:
    """Split ``1>> out.log 2>> err.log`` (and ``> f``, ``2>&1``, ``&> f``) off
    a command: (the rest, [(stdout|stderr, path or 'stdout', mode)], notes)."""
    redirects: list[tuple[str, str, str]] = []
    notes: list[str] = []

    def take(match: re.Match) -> str:
        fd, mode, target = match.group("fd"), match.group("mode"), match.group("target")
        if target == "&1" and fd == "2":
            redirects.append(("stderr", "stdout", mode))
        elif target.startswith("&"):
            notes.append(f"redirection {match.group(0).strip()} left out")
        elif fd == "&":
            redirects.extend([("stdout", target, mode), ("stderr", "stdout", mode)])
        else:
            redirects.append(("stderr" if fd == "2" else "stdout", target, mode))
        return " "

    rest = _REDIRECT_RE.sub(take, command)
    return " ".join(rest.split()), redirects, notes


def convert(procfile_text: str, env_text: str | None, shown: str) -> str:
    """The ``companion_workers = [...]`` text for a Procfile (pure)."""
    processes, notes = parse_procfile(procfile_text)
    env: dict[str, str] = {}
    if env_text is not None:
        env, env_notes = parse_env(env_text)
        notes += env_notes
    lines = [f"# Converted by `{PROG}` from {_one_line(shown)}",
             "# Review every note below before using this in gunicorn.conf.py.",
             "# $VAR references are left to /bin/sh, which expands them at each start;",
             "# " + ("the .env values are in each companion's env, as honcho sets them."
                     if env_text is not None else "no .env file was read."),
             "# Relative paths are from the directory honcho ran in: start Gunicorn there."]
    lines += [f"# {_one_line(note)}" for note in notes]
    if env:
        lines.append(f"{ENV_NAME} = {{")
        lines += [f"    {key!r}: {value!r}," for key, value in env.items()]
        lines.append("}")
    lines.append("companion_workers = [")
    for process in processes:
        if process.name == WEB_PROCESS:
            lines.append(f"    # {WEB_PROCESS} (line {process.line}) left out: Gunicorn is the "
                         f"web server: {_one_line(process.command)}")
            continue
        converted = convert_process(process, env)
        lines.append(f"    # {_one_line(process.name)} (line {process.line}): "
                     f"{_one_line(process.command)}")
        lines += [f"    # {_one_line(note)}" for note in converted.notes]
        lines.append("    {")
        for key, value in converted.fields.items():
            lines.append(f"        {key!r}: {value!r},")
        lines.append("    },")
    lines.append("]")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print a companion_workers block for gunicorn.conf.py converted from a "
        "honcho/foreman/Heroku Procfile.")
    parser.add_argument("procfile", metavar="PROCFILE", nargs="?", default="Procfile",
                        help="the Procfile (default: ./Procfile)")
    parser.add_argument("-e", "--env", metavar="FILE",
                        help="the .env file to read (default: .env next to the Procfile, "
                             "when there is one)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    env_path = args.env or os.path.join(os.path.dirname(args.procfile) or ".", ".env")
    try:
        procfile_text = _read(args.procfile)
        env_text = _read(env_path) if args.env or os.path.exists(env_path) else None
    except ProcfileError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(convert(procfile_text, env_text, args.procfile))
    sys.stdout.flush()
    return 0


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise ProcfileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ProcfileError(f"cannot read {path}: not UTF-8 ({exc.reason})") from None
