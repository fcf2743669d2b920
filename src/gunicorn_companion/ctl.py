"""The ``gunicorn-companion`` control commands: ask the manager, print its answer.

Standard library only and no Gunicorn import: operators run this in loops
and scripts, so it must start about as fast as ``supervisorctl status``.
"""

from __future__ import annotations

import json
import math
import os
import sys

from . import client
from .protocol import COMMANDS

PROG = "gunicorn-companion"
SOCKET_ENV = "GUNICORN_COMPANION_SOCKET"
DEFAULT_TIMEOUT = 30.0
# Gunicorn's own default config file, looked for in the current directory.
DEFAULT_CONFIG = "gunicorn.conf.py"
SOCKET_SETTING = "companion_control_socket"

EXIT_OK = 0
EXIT_REFUSED = 1  # the manager answered ok: false
EXIT_USAGE = 2  # bad arguments, or no manager to ask

# One entry per command in protocol.COMMANDS; a command missing here still
# works, it just has no help line.
_HELP = {
    "status": "show every companion's state",
    "start": "start a companion",
    "stop": "stop a companion; it stays down until started",
    "restart": "stop a companion, then start it again",
    "reread": "re-read the companion configuration",
    "tail": "print a companion's latest output lines (-f: keep following)",
    "check": "health probe: exit 0 when every companion that should run is RUNNING",
}

# Commands of this CLI alone: ``check`` asks for a status and judges it here.
_LOCAL_COMMANDS = {"check": "status"}

# Subcommands that cli.main runs before this parser ever sees them; listed
# here so that `gunicorn-companion --help` shows them.
_OTHER_COMMANDS = {
    "serve": "run Gunicorn with companions (everything after it means what it means to gunicorn)",
    "import-supervisor": "print companion_workers for the programs of a supervisord.conf",
    "import-procfile": "print companion_workers for the processes of a Procfile (honcho, "
                       "foreman, Heroku)",
}

BRIEF_FIELDS = ("name", "state")  # status --brief
_STATUS_HEADER = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "MEMORY", "OUTPUT",
                  "NOTE")

_EPILOG = (
    "exit status: 0 when the manager did it, 1 when it refused (the reason is on stderr), "
    "2 for usage errors or when the control socket cannot be reached. "
    f"The socket: -s PATH, else companion_control_socket from -c FILE, else ${SOCKET_ENV}, "
    f"else from ./{DEFAULT_CONFIG}"
)
_CHECK_EPILOG = (
    "exit status: 0 when every companion that should run (autostart, or started by hand) "
    "is RUNNING; companions stopped by hand do not count. 1 naming each one that is not "
    "RUNNING and why. 2 when the manager cannot be reached or a NAME matches no companion"
)

EXIT_UNHEALTHY = 1


def main(argv: list[str] | None = None) -> int:
    """Run one control command and return the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_common(argv)
    if args is None:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            # argparse exits on --help and on usage errors; callers want a code.
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    try:
        path = find_socket(args.socket, args.config, os.environ, os.getcwd())
    except SocketNotFound as exc:
        if args.command == "check" and args.json:
            print(json.dumps({"healthy": False, "reachable": False, "error": str(exc)}))
        _complain(str(exc))
        return EXIT_USAGE

    if args.command == "check":
        return _check(path, args)
    request: dict[str, object] = {"cmd": args.command}
    if COMMANDS[args.command]:
        request["name"] = args.name
    if getattr(args, "brief", False):
        request["fields"] = list(BRIEF_FIELDS)
    if args.command == "tail":
        request["lines"] = args.lines
        if args.follow:
            request["follow"] = True
            return _follow(path, request, args.json)
    try:
        reply = client.call(path, request, timeout=args.timeout)
    except client.ClientError as exc:
        _complain(" ".join(str(exc).split("\n")))
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C while waiting is a normal way to give up: no traceback.
        return 130

    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    if reply.get("ok") is not True:
        _complain(str(reply.get("error") or "the manager refused the request without a reason"))
        return EXIT_REFUSED
    if not args.json:
        if args.command == "status":
            if getattr(args, "brief", False):
                text = format_brief(reply)
            else:
                text = format_status(reply, None if getattr(args, "wide", False)
                                     else terminal_width())
        elif args.command == "tail":
            text = "\n".join(str(line) for line in reply.get("lines") or [])
        else:
            text = _message(reply)
        if text:
            print(text)
    return EXIT_OK


class SocketNotFound(Exception):
    """No control socket could be named; the message says what was tried."""


def find_socket(socket_flag: str | None, config_flag: str | None, environ, cwd: str) -> str:
    """The control socket to ask: -s, else the -c file's setting, else the
    environment, else ``./gunicorn.conf.py``'s setting (as Gunicorn finds its
    config)."""
    if socket_flag is not None and config_flag is not None:
        raise SocketNotFound("give -s PATH or -c FILE, not both")
    if socket_flag:
        return socket_flag
    if config_flag:
        return socket_from_config(config_flag, cwd)
    if environ.get(SOCKET_ENV):
        return environ[SOCKET_ENV]
    default = os.path.join(cwd, DEFAULT_CONFIG)
    if os.path.exists(default):
        return socket_from_config(default, cwd)
    raise SocketNotFound(f"no control socket: pass -s PATH or -c {DEFAULT_CONFIG}, set "
                         f"{SOCKET_ENV}, or run this where {DEFAULT_CONFIG} is")


def socket_from_config(location: str, cwd: str) -> str:
    """``companion_control_socket`` as a Gunicorn config file sets it.

    The file is executed as Gunicorn executes it (a module named
    ``__config__`` with ``__file__`` set), but without importing Gunicorn or
    the package's config loader: those cost more than the whole command.
    """
    namespace = read_config_namespace(location)
    value = namespace.get(SOCKET_SETTING)
    if not value:
        raise SocketNotFound(f"{location} sets no {SOCKET_SETTING}: set it there, or pass -s PATH")
    if not isinstance(value, (str, os.PathLike)):
        raise SocketNotFound(f"{location}: {SOCKET_SETTING} must be a path, "
                             f"got {type(value).__name__}")
    path = os.fspath(value)
    # Gunicorn binds a relative path from the directory it runs in: its
    # `chdir` setting when the file sets one, else where it was started,
    # which is here for anyone using this command next to the file.
    chdir = namespace.get("chdir")
    base = os.path.join(cwd, chdir) if isinstance(chdir, str) and chdir else cwd
    return os.path.normpath(os.path.join(base, path))


def read_config_namespace(location: str) -> dict:
    """Execute a Gunicorn config file (a path, ``file:PATH`` or
    ``python:MODULE``) and return its names; a fault raises SocketNotFound."""
    try:
        if location.startswith("python:"):
            import importlib

            return dict(vars(importlib.import_module(location[len("python:"):])))
        path = location[len("file:"):] if location.startswith("file:") else location
        try:
            with open(path, "rb") as file:
                source = file.read()
        except OSError as exc:
            raise SocketNotFound(f"cannot read config file {path}: {exc.strerror}") from None
        namespace = {"__name__": "__config__", "__file__": os.path.abspath(path),
                     "__builtins__": __builtins__}
        exec(compile(source, path, "exec"), namespace)
        return namespace
    except SocketNotFound:
        raise
    except SyntaxError as exc:
        raise SocketNotFound(f"cannot read config file {location}: SyntaxError: {exc.msg} "
                             f"(line {exc.lineno})") from None
    except BaseException as exc:  # a config file may even call sys.exit()
        raise SocketNotFound(f"cannot read config file {location}: "
                             f"{type(exc).__name__}: {exc}") from None


def _check(path: str, args) -> int:
    """``check [NAME...]``: judge a status reply for a probe."""
    try:
        reply = client.call(path, {"cmd": "status"}, timeout=args.timeout)
    except client.ClientError as exc:
        message = " ".join(str(exc).split("\n"))
        if args.json:
            print(json.dumps({"healthy": False, "reachable": False, "error": message}))
        _complain(message)
        return EXIT_USAGE
    if reply.get("ok") is not True:
        message = str(reply.get("error") or "the manager refused the status request")
        if args.json:
            print(json.dumps({"healthy": False, "reachable": True, "error": message}))
        _complain(message)
        return EXIT_USAGE
    companions = [c for c in reply.get("companions") or [] if isinstance(c, dict)]
    names = list(getattr(args, "names", None) or [])
    unknown = [n for n in names
               if not any(n in (c.get("name"), c.get("group")) for c in companions)]
    if unknown:
        message = f"no companion or group named {', '.join(map(repr, unknown))}"
        if args.json:
            print(json.dumps({"healthy": False, "reachable": True, "error": message}))
        _complain(message)
        return EXIT_USAGE
    verdict = assess_health(companions, names)
    if args.json:
        print(json.dumps(verdict, indent=2, sort_keys=True))
    else:
        print(format_check(verdict))
    return EXIT_OK if verdict["healthy"] else EXIT_UNHEALTHY


def assess_health(companions: list[dict], names: list[str]) -> dict:
    """Which companions count (those that should run, of those named) and
    why each that is not RUNNING fails (pure)."""
    counted, problems, ignored, standby = [], [], [], []
    for companion in companions:
        name = str(companion.get("name", "?"))
        if names and not (name in names or companion.get("group") in names):
            continue
        if companion.get("wanted") is False:
            ignored.append(name)  # stopped by hand, or not autostarted: not a fault
            continue
        if _standing_by(companion):
            # a fleet singleton another host runs: waiting is this host's job,
            # and a probe that failed here would restart every standby
            standby.append(name)
            continue
        counted.append(name)
        if companion.get("state") != "RUNNING":
            problems.append({"name": name, "state": str(companion.get("state", "?")),
                             "reason": why_not_running(companion)})
    verdict = {"healthy": not problems, "reachable": True, "checked": counted,
               "not_running": problems, "stopped_by_hand": ignored}
    if standby:
        verdict["standing_by"] = standby
    return verdict


def _standing_by(companion: dict) -> bool:
    """A fleet singleton whose lease another host holds (or that waits out
    its lock-delay): not running here, and rightly so."""
    lease = companion.get("lease")
    return (companion.get("state") == "STARTING" and isinstance(lease, dict)
            and lease.get("state") in ("waiting", "delay"))


def why_not_running(companion: dict) -> str:
    """'FATAL after 3 failed starts, last exit 1', 'BACKOFF for 2m10s, ...' (pure)."""
    state = companion.get("state")
    last_exit = format_exit(companion.get("last_exit"))
    backoff = companion.get("backoff")
    parts = []
    if state == "BACKOFF" and isinstance(backoff, dict):
        parts.append(f"backing off for {format_duration(backoff.get('seconds'))}")
        failures = backoff.get("failures")
        if isinstance(failures, int) and failures:
            parts.append(f"{failures} failed start{'' if failures == 1 else 's'} in a row")
        if isinstance(backoff.get("retry_in"), (int, float)):
            parts.append(f"next try in {format_duration(backoff['retry_in'])}")
    elif state == "FATAL":
        parts.append("gave up restarting it")
    elif state == "STARTING":
        parts.append(format_note(companion) or "not up yet")
    elif state == "STOPPING":
        parts.append(format_note(companion) or "stopping")
    if last_exit != "-":
        parts.append(f"last exit: {last_exit}")
    return ", ".join(parts)


def format_check(verdict: dict) -> str:
    """The probe's answer: one summary line, then one line per failing companion."""
    checked, failing = verdict["checked"], verdict["not_running"]
    running = len(checked) - len(failing)
    lines = [f"{'OK' if verdict['healthy'] else 'FAIL'}: {running}/{len(checked)} "
             f"companion{'' if len(checked) == 1 else 's'} RUNNING"]
    for problem in failing:
        lines.append(f"{problem['name']}: {problem['state']}"
                     + (f" ({problem['reason']})" if problem["reason"] else ""))
    if verdict["stopped_by_hand"]:
        lines.append(f"not counted (stopped): {', '.join(verdict['stopped_by_hand'])}")
    if verdict.get("standing_by"):
        lines.append("not counted, standing by (another host runs it): "
                     + ", ".join(verdict["standing_by"]))
    return "\n".join(lines)


def _follow(path: str, request: dict, as_json: bool) -> int:
    """tail -f: print lines as the manager sends them, until Ctrl-C."""
    try:
        for reply in client.stream(path, request):
            if reply.get("ok") is not True:
                _complain(str(reply.get("error") or "the manager refused the request"))
                return EXIT_REFUSED
            if as_json:
                print(json.dumps(reply, sort_keys=True), flush=True)
            else:
                for line in reply.get("lines") or []:
                    print(line, flush=True)
    except client.ClientError as exc:
        _complain(" ".join(str(exc).split("\n")))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK  # the way to stop following
    except BrokenPipeError:
        return EXIT_OK  # piped into head: the reader has had enough
    return EXIT_OK


def _formatter(prog: str):
    """argparse's formatter without its import of shutil (and bz2, lzma and
    zlib behind it) just to learn the terminal width: os knows it too."""
    import argparse

    try:
        width = os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        width = int(os.environ.get("COLUMNS", "80") or 80)
    return argparse.HelpFormatter(prog, width=max(width - 2, 40))


def _parse_common(argv: list[str]) -> object | None:
    """The everyday forms (``[-s PATH] [--json] status|start NAME|...``) without
    argparse: building its parser costs more than the rest of a status call.
    Anything else (help, tail's options, mistakes) returns None for argparse."""
    import types

    options = {"socket": None, "config": None}
    flags = {"json": False, "wide": False, "brief": False}
    words: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-s", "--socket", "-c", "--config") and i + 1 < len(argv):
            option = "socket" if arg in ("-s", "--socket") else "config"
            if options[option] is not None:
                return None  # given twice: argparse's rules decide
            options[option], i = argv[i + 1], i + 2
            continue
        if arg in ("--json", "--wide", "--brief"):
            flags[arg[2:]], i = True, i + 1
            continue
        if arg.startswith("-"):
            return None
        words.append(arg)
        i += 1
    if not words or words[0] == "tail":
        return None
    if words[0] == "check":
        names = words[1:]
    elif words[0] in COMMANDS and len(words) == 1 + COMMANDS[words[0]]:
        names = words[1:]
    else:
        return None
    if (flags["wide"] or flags["brief"]) and words[0] != "status":
        return None
    return types.SimpleNamespace(**options, **flags, timeout=DEFAULT_TIMEOUT, command=words[0],
                                 name=names[0] if names else None, names=names)


def build_parser():
    """The argument parser for the control commands."""
    import argparse

    # The global options are declared twice so they work before and after the
    # subcommand; the subcommand copies default to SUPPRESS so they never
    # overwrite a value given before the subcommand.
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Control the companion processes of a running Gunicorn.",
        epilog=_EPILOG,
        formatter_class=_formatter,
    )
    _add_global_options(parser, suppress=False)
    after = argparse.ArgumentParser(add_help=False, formatter_class=_formatter)
    _add_global_options(after, suppress=True)

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd, needs_name in {**COMMANDS, **dict.fromkeys(_LOCAL_COMMANDS, False)}.items():
        sub = commands.add_parser(
            cmd, parents=[after], help=_HELP.get(cmd), description=_HELP.get(cmd),
            epilog=_CHECK_EPILOG if cmd == "check" else _EPILOG, formatter_class=_formatter,
        )
        if cmd == "check":
            sub.add_argument("names", metavar="NAME", nargs="*",
                             help="check only these companions (names or group names)")
        if cmd == "status":
            sub.add_argument("--wide", action="store_true",
                             help="show output paths whole instead of fitting the terminal")
            sub.add_argument("--brief", action="store_true",
                             help="only each companion's name and state (the fastest status)")
        if needs_name:
            sub.add_argument("name", metavar="NAME",
                             help="a companion's name, or the name of a group of instances")
        if cmd == "tail":
            sub.add_argument("-n", "--lines", type=int, default=10, metavar="LINES",
                             help="how many of the latest lines (default: 10)")
            sub.add_argument("-f", "--follow", action="store_true",
                             help="keep printing new lines until interrupted")
    for cmd, text in _OTHER_COMMANDS.items():
        commands.add_parser(cmd, help=text, description=text, add_help=False,
                            formatter_class=_formatter)
    return parser


def _add_global_options(parser, suppress: bool) -> None:
    """Add -s/--socket, --json and --timeout to ``parser``."""
    import argparse

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-s",
        "--socket",
        metavar="PATH",
        default=default(None),
        help=f"the manager's control socket (default: ${SOCKET_ENV})",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=default(None),
        help=f"read companion_control_socket from this Gunicorn config file "
             f"(default: ./{DEFAULT_CONFIG} when neither -s nor ${SOCKET_ENV} is given)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the manager's raw reply as JSON",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=default(DEFAULT_TIMEOUT),
        help=f"give up waiting for the manager after this long (default: {DEFAULT_TIMEOUT:g})",
    )


def _positive_seconds(text: str) -> float:
    """argparse type for --timeout."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _complain(message: str) -> None:
    """Print an error for the operator on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr)


def _message(reply: dict) -> str:
    """The manager's sentence about what it did, if it sent one."""
    message = reply.get("message")
    return message if isinstance(message, str) else ""


def terminal_width() -> int | None:
    """The width to fit the status table into: $COLUMNS, else the terminal's;
    None when stdout is no terminal (a pipe or a file gets whole paths).

    shutil.get_terminal_size's rules, without importing shutil (and bz2,
    lzma and zlib behind it) in a command that must start fast."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    except ValueError:
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns or None
    except (OSError, ValueError, AttributeError):
        return None


# Output paths are shortened no further than this, to stay recognisable.
_MIN_OUTPUT_WIDTH = 16
_ELLIPSIS = "..."


def shorten_middle(text: str, width: int) -> str:
    """'/srv...worker.log': the start and, longer, the end (the file name) stay (pure)."""
    if len(text) <= width:
        return text
    if width <= len(_ELLIPSIS):
        return text[:width]
    keep = width - len(_ELLIPSIS)
    head = keep // 3
    return text[:head] + _ELLIPSIS + text[len(text) - (keep - head):]


def format_status(reply: dict, width: int | None = None) -> str:
    """Render a status reply as an aligned table, header first, no trailing newline.

    With a ``width``, the OUTPUT column's paths are shortened in the middle
    and the NOTE cut at the end so that no line is longer: a terminal would
    wrap it and break the table. None shows everything (``--wide``, pipes)."""
    rows = [_STATUS_HEADER]
    companions = reply.get("companions")
    for companion in companions if isinstance(companions, list) else []:
        if not isinstance(companion, dict):
            continue
        pid = companion.get("pid")
        restarts = companion.get("restarts")
        rows.append(
            (
                str(companion.get("name", "?")),
                str(companion.get("state", "?")),
                "-" if pid is None else str(pid),
                format_duration(companion.get("uptime")),
                "-" if restarts is None else str(restarts),
                format_exit(companion.get("last_exit")),
                format_bytes(companion.get("memory")),
                format_output(companion),
                "; ".join(filter(None, (format_note(companion), format_dropped(companion)))),
            )
        )
    if width is not None:
        rows = _fit(rows, width)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_STATUS_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    if width is not None:
        # a terminal narrower than the fixed columns: cut, never wrap
        lines = [_cut_end(line, max(width, len(_ELLIPSIS) + 1)) for line in lines]
    return "\n".join(lines)


def _fit(rows: list[tuple[str, ...]], width: int) -> list[tuple[str, ...]]:
    """Shorten the OUTPUT cells, then cut the NOTE cells, until every row fits."""
    output, note = _STATUS_HEADER.index("OUTPUT"), _STATUS_HEADER.index("NOTE")
    widths = [max(len(row[i]) for row in rows) for i in range(len(_STATUS_HEADER))]
    # every column but NOTE is padded and followed by two spaces
    before_note = sum(widths[:note]) + 2 * note
    excess = before_note + widths[note] - width
    if excess > 0 and widths[output] > _MIN_OUTPUT_WIDTH:
        widths[output] = max(_MIN_OUTPUT_WIDTH, widths[output] - excess)
        before_note = sum(widths[:note]) + 2 * note
        rows = [row[:output] + (shorten_middle(row[output], widths[output]),) + row[output + 1:]
                for row in rows]
    room = width - before_note
    if room < len("NOTE"):
        return rows  # no room for notes at all: format_status cuts the lines
    return [row[:note] + (_cut_end(row[note], room),) for row in rows]


def _cut_end(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - len(_ELLIPSIS)] + _ELLIPSIS


def format_brief(reply: dict) -> str:
    """Render a brief status reply (names and states) as an aligned table."""
    companions = reply.get("companions")
    rows = [("NAME", "STATE")] + [
        (str(c.get("name", "?")), str(c.get("state", "?")))
        for c in (companions if isinstance(companions, list) else []) if isinstance(c, dict)]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {state}" for name, state in rows)


def format_duration(seconds: object) -> str:
    """Seconds as a compact duration: '5s', '3m12s', '2h05m', '3d04h'; '-' when unknown."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "-"
    if not math.isfinite(seconds):
        return "-"
    # A slightly negative value can only be clock noise between two readings.
    total = max(0, int(seconds))
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(size: object) -> str:
    """Unshared memory as '812K', '12.3M', '1.5G'; '-' when not measured."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
        return "-"
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{int(size)}B"


def format_dropped(companion: dict) -> str:
    """How many output lines its destination lost: '212 output lines dropped'."""
    dropped = companion.get("output_dropped")
    if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped > 0:
        return f"{dropped} output line{'' if dropped == 1 else 's'} dropped"
    return ""


def format_output(companion: dict) -> str:
    """Where its output goes: 'inherit', a file, or two files."""
    out, err = companion.get("stdout"), companion.get("stderr")
    if not isinstance(out, str):
        return "-"
    if err in (None, out, "stdout") or not isinstance(err, str):
        return out
    return f"{out}, {err}"


def format_note(companion: dict) -> str:
    """What an operator should know beyond the state: what it waits for, or
    why it was last restarted on purpose."""
    stopping = companion.get("stopping")
    if isinstance(stopping, dict):
        return format_stopping(stopping)
    waiting = companion.get("waiting")
    if isinstance(waiting, str) and waiting:
        return f"waiting for {waiting}"
    lease = companion.get("lease")
    if isinstance(lease, dict) and lease.get("state") == "held" and isinstance(
            lease.get("expires_in"), (int, float)):
        # the holder's lease: how long it lasts without a renewal
        return (f"fleet lease token {lease.get('token')}, expires in "
                f"{format_duration(max(0.0, lease['expires_in']))}")
    recycled = companion.get("last_recycle")
    if isinstance(recycled, str) and recycled:
        return f"last restart: {recycled}"
    return ""


def format_stopping(stopping: dict) -> str:
    """'SIGTERM sent 12s ago, 3 processes left, SIGKILL in 1m48s', or once
    escalated 'stopping for 2m05s, SIGKILL sent, 1 process left'."""
    left = stopping.get("group_left")
    seconds, timeout = stopping.get("seconds"), stopping.get("timeout")
    if stopping.get("signal") == "SIGKILL":
        parts = [f"stopping for {format_duration(seconds)}", "SIGKILL sent"]
    else:
        parts = [f"{stopping.get('signal', '?')} sent {format_duration(seconds)} ago"]
    if isinstance(left, int):
        parts.append(f"{left} process{'' if left == 1 else 'es'} left")
    if (stopping.get("signal") != "SIGKILL" and isinstance(seconds, (int, float))
            and isinstance(timeout, (int, float))):
        parts.append(f"SIGKILL in {format_duration(max(0.0, timeout - seconds))}")
    return ", ".join(parts)


def format_exit(last_exit: object) -> str:
    """How a companion last ended: '-', 'exit 0', 'SIGKILL'."""
    if last_exit is None:
        return "-"
    if isinstance(last_exit, dict):
        sig = last_exit.get("signal")
        if isinstance(sig, int) and not isinstance(sig, bool):
            return f"signal {sig}"
        if sig is not None:
            return str(sig)
        code = last_exit.get("code")
        if code is not None:
            return f"exit {code}"
        return "-"
    return str(last_exit)


if __name__ == "__main__":
    sys.exit(main())
