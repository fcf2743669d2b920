"""The control socket's wire format: one JSON object per line, each way.

Pure codec: no sockets, no clock and no Gunicorn, so the manager, the CLI and
the tests share it and every rule here is pinned by table tests.

A client sends one request line such as ``{"cmd": "start", "name": "beat"}``
and the manager answers with one reply line, ``{"ok": true, ...}`` or
``{"ok": false, "code": "...", "error": "..."}``: ``code`` is one of
ERROR_CODES, stable for programs to test, and ``error`` an English message for
people (its wording may change). ``tail`` with ``follow`` and ``events``
send several reply lines: a stream that ends when the client hangs up.
"""

from __future__ import annotations

import json

# No dataclasses or typing here: the CLI imports this module, and those two
# (with inspect, ast and dis behind them) cost more start-up time than the
# rest of the CLI together. Annotations stay strings (see the __future__ import).

# The longest request line accepted, in bytes, not counting its line ending.
# Requests are tiny; the limit only bounds what a confused peer can make the
# manager buffer before it gives up on the connection.
MAX_LINE = 64 * 1024

# Command name -> whether it needs a "name" field. Adding a command is one line
# here plus its handler in the manager.
COMMANDS: dict[str, bool] = {
    "status": False,
    "start": True,
    "stop": True,
    "restart": True,
    "reread": False,
    "tail": True,
    "events": False,
}

# The "code" of every error reply (docs/control.md explains each). Stable:
# clients may test them, so a code is added, never renamed or reused.
ERROR_CODES = frozenset({
    # the request line itself (parse_request)
    "not_utf8", "not_json", "not_an_object", "missing_field", "bad_field",
    "unknown_command", "unreadable_request", "line_too_long",
    # the connection (server)
    "permission_denied", "too_many_connections", "internal_error",
    # the command (commands, manager)
    "no_such_companion", "shutting_down", "exited_while_starting", "did_not_start",
    "started_again", "removed", "invalid_config", "mixed",
})

# Error messages quote values the peer sent; a 64 KiB name must not turn into a
# 64 KiB error line.
_MAX_SHOWN = 60


def encode(obj: dict) -> bytes:
    """Serialise one message as a compact JSON line ending in a newline."""
    # ensure_ascii escapes every non-ASCII character and JSON escapes control
    # characters, so the result is always exactly one line of ASCII.
    return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"


class LineDecoder:
    """Split a byte stream into lines, refusing any line over ``max_line`` bytes."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.overflowed = False
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes and return the complete, non-blank lines they finish."""
        if self.overflowed:
            return []
        # The pending tail never holds a newline, so only the new bytes need
        # searching: a peer trickling one byte at a time stays linear.
        search_from = len(self._pending)
        self._pending += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._pending.find(b"\n", max(start, search_from))
            if end < 0:
                break
            line = bytes(self._pending[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                return self._overflow(lines)
            if line.strip():
                lines.append(line)
        del self._pending[:start]
        # A tail of max_line bytes plus a "\r" may still end as a legal line.
        if len(self._pending) - self._pending.endswith(b"\r") > self.max_line:
            return self._overflow(lines)
        return lines

    def _overflow(self, lines: list[bytes]) -> list[bytes]:
        """Give up on the stream: nothing after an over-long line can be framed."""
        self.overflowed = True
        self._pending = bytearray()
        return lines


class Request:
    """A valid request; ``raw`` is the whole decoded object, for later fields."""

    __slots__ = ("cmd", "name", "raw")

    def __init__(self, cmd: str, name: str | None = None, raw: dict | None = None):
        object.__setattr__(self, "cmd", cmd)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "raw", {} if raw is None else raw)

    def __setattr__(self, attr: str, value: object) -> None:
        raise AttributeError(f"Request is immutable: cannot set {attr!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Request:
            return NotImplemented
        return (self.cmd, self.name, self.raw) == (other.cmd, other.name, other.raw)

    def __hash__(self) -> int:
        return hash((self.cmd, self.name))  # raw is a dict: equal requests still hash equal

    def __repr__(self) -> str:
        return f"Request(cmd={self.cmd!r}, name={self.name!r}, raw={self.raw!r})"


class ProtocolError:
    """Why a request line was refused: a code for programs (one of
    ERROR_CODES) and a message worded for the person who sent it."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, code
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "message", message)

    def __setattr__(self, attr: str, value: object) -> None:
        raise AttributeError(f"ProtocolError is immutable: cannot set {attr!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not ProtocolError:
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"ProtocolError(code={self.code!r}, message={self.message!r})"


def parse_request(line: bytes) -> Request | ProtocolError:
    """Decode and validate one request line; never raises."""
    try:
        return _parse(line)
    except Exception as exc:
        return ProtocolError("unreadable_request",
                             f"request could not be read: {type(exc).__name__}: {exc}")


def _parse(line: bytes) -> Request | ProtocolError:
    """parse_request without the safety net."""
    if isinstance(line, str):
        text = line
    else:
        data = bytes(line)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return ProtocolError(
                "not_utf8",
                f"request is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
            )
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return ProtocolError("not_json",
                             f"request is not valid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return ProtocolError("not_json", "request is not valid JSON: it is nested too deeply")
    except ValueError:
        # json.loads of a str raises a plain ValueError only for an integer
        # longer than Python's int/str conversion limit.
        return ProtocolError("not_json",
                             "request is not valid JSON: it holds a number too long to read")
    if not isinstance(obj, dict):
        return ProtocolError(
            "not_an_object",
            f'request must be a JSON object like {{"cmd": "status"}}, got {_kind(obj)}'
        )

    known = ", ".join(COMMANDS)
    if "cmd" not in obj:
        return ProtocolError("missing_field",
                             f'request has no "cmd" field; known commands: {known}')
    cmd = obj["cmd"]
    if not isinstance(cmd, str):
        return ProtocolError(
            "bad_field", f'"cmd" must be a string, got {_kind(cmd)}; known commands: {known}')
    if cmd not in COMMANDS:
        # Imported here: only a typo pays for it, not every CLI start.
        import difflib

        # Match case-insensitively so "STATUS" still gets a suggestion.
        match = difflib.get_close_matches(cmd.lower(), list(COMMANDS), n=1, cutoff=0.6)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        return ProtocolError(
            "unknown_command", f"unknown command {_show(cmd)}{hint}; known commands: {known}")

    needs_name = COMMANDS[cmd]
    name = obj.get("name")
    if name is None:
        if needs_name:
            return ProtocolError(
                "missing_field", f'command {cmd!r} needs a "name" field naming a companion, '
                f'e.g. {{"cmd": "{cmd}", "name": "scheduler"}}'
            )
        return Request(cmd=cmd, name=None, raw=obj)
    # A name on a command that does not need one is still checked: a later
    # version may use it (e.g. `status NAME`), and garbage there is a client bug.
    if not isinstance(name, str):
        return ProtocolError("bad_field", f'"name" must be a string, got {_kind(name)}')
    if not name.strip():
        return ProtocolError("bad_field", f'"name" must not be empty (got {_show(name)})')
    return Request(cmd=cmd, name=name, raw=obj)


def _kind(value: object) -> str:
    """Describe a decoded JSON value's type in JSON's words, with a short preview."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({_show(value)})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    """repr() cut to a readable length."""
    try:
        text = repr(value)
    except ValueError:
        # repr of a huge int can exceed the int/str conversion limit.
        return "<too long to show>"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def ok(**fields: object) -> dict:
    """A success reply carrying ``fields``."""
    return {"ok": True, **fields}


def error(code: str, message: str) -> dict:
    """A refusal reply: ``code`` (one of ERROR_CODES) for programs, ``message``
    for the operator."""
    assert code in ERROR_CODES, code
    return {"ok": False, "code": code, "error": message}
