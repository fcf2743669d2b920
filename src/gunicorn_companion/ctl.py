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
}

# Subcommands that cli.main runs before this parser ever sees them; listed
# here so that `gunicorn-companion --help` shows them.
_OTHER_COMMANDS = {
    "serve": "run Gunicorn with companions (everything after it means what it means to gunicorn)",
    "import-supervisor": "print companion_workers for the programs of a supervisord.conf",
}

BRIEF_FIELDS = ("name", "state")  # status --brief
_STATUS_HEADER = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "MEMORY", "OUTPUT",
                  "NOTE")

_EPILOG = (
    "exit status: 0 when the manager did it, 1 when it refused (the reason is on stderr), "
    "2 for usage errors or when the control socket cannot be reached"
)


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

    path = args.socket if args.socket is not None else os.environ.get(SOCKET_ENV, "")
    if not path:
        _complain(f"no control socket: pass -s PATH or set {SOCKET_ENV}")
        return EXIT_USAGE

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
            text = format_brief(reply) if getattr(args, "brief", False) else format_status(reply)
        elif args.command == "tail":
            text = "\n".join(str(line) for line in reply.get("lines") or [])
        else:
            text = _message(reply)
        if text:
            print(text)
    return EXIT_OK


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

    socket_path, as_json, brief, words = None, False, False, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-s", "--socket") and i + 1 < len(argv):
            socket_path, i = argv[i + 1], i + 2
            continue
        if arg == "--json":
            as_json, i = True, i + 1
            continue
        if arg == "--brief":
            brief, i = True, i + 1
            continue
        if arg.startswith("-"):
            return None
        words.append(arg)
        i += 1
    if not words or words[0] not in COMMANDS or words[0] == "tail":
        return None
    needs_name = COMMANDS[words[0]]
    if len(words) != 1 + needs_name or (brief and words[0] != "status"):
        return None
    return types.SimpleNamespace(socket=socket_path, json=as_json, timeout=DEFAULT_TIMEOUT,
                                 command=words[0], name=words[1] if needs_name else None,
                                 brief=brief)


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
    for cmd, needs_name in COMMANDS.items():
        sub = commands.add_parser(
            cmd, parents=[after], help=_HELP.get(cmd), description=_HELP.get(cmd), epilog=_EPILOG,
            formatter_class=_formatter,
        )
        if needs_name:
            sub.add_argument("name", metavar="NAME",
                             help="a companion's name, or the name of a group of instances")
        if cmd == "status":
            sub.add_argument("--brief", action="store_true",
                             help="only each companion's name and state (the fastest status)")
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


def format_status(reply: dict) -> str:
    """Render a status reply as an aligned table, header first, no trailing newline."""
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(_STATUS_HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


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
