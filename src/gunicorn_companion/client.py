"""A blocking client for the companion manager's control socket.

Standard library only and no Gunicorn import: the CLI loads this on every
invocation and must start fast.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

from .protocol import LineDecoder, encode

# Replies can be much larger than requests (a status of many companions, a
# burst of log lines), so the client allows more than protocol.MAX_LINE while
# still refusing to buffer a runaway stream forever.
MAX_REPLY_LINE = 16 * 1024 * 1024

_RECV_SIZE = 64 * 1024
_NOT_RUNNING_HINT = "(is Gunicorn running with companion_control_socket set?)"


class ClientError(Exception):
    """The manager could not be asked or did not answer; the message names the socket."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def call(path: str, request: dict, timeout: float = 30.0) -> dict:
    """Send one request and return the manager's single reply."""
    deadline = time.monotonic() + timeout
    sock = _connect(path, timeout)
    try:
        _send(sock, path, request, timeout, deadline)
        decoder = LineDecoder(MAX_REPLY_LINE)
        for line in _lines(sock, path, decoder, timeout, deadline):
            reply = _decode_reply(line, path)
            if not isinstance(reply.get("ok"), bool):
                raise ClientError(f'invalid reply from {path}: no boolean "ok" field', path)
            return reply
        raise ClientError(f"connection to {path} closed before a reply", path)
    finally:
        sock.close()


def stream(path: str, request: dict, timeout: float | None = None) -> Iterator[dict]:
    """Send one request and yield each reply until the manager closes the connection."""
    # ``timeout`` bounds each wait for the next reply (an idle timeout), not the
    # whole stream, which may legitimately run until the operator hits Ctrl-C.
    sock = _connect(path, timeout)
    try:
        _send(sock, path, request, timeout, None)
        decoder = LineDecoder(MAX_REPLY_LINE)
        replied = False
        for line in _lines(sock, path, decoder, timeout, None):
            replied = True
            yield _decode_reply(line, path)
        if not replied:
            raise ClientError(f"connection to {path} closed before a reply", path)
    finally:
        sock.close()


class Session:
    """One connection for many requests, one at a time (top asks for a
    status every second over it: no connect and accept per refresh)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock = _connect(path, timeout)
        # the socket's timeout (set by _connect) bounds each wait for a reply
        self.replies = _lines(self.sock, path, LineDecoder(MAX_REPLY_LINE), timeout, None)

    def request(self, request: dict) -> dict:
        _send(self.sock, self.path, request, self.timeout, None)
        line = next(self.replies, None)
        if line is None:
            raise ClientError(f"connection to {self.path} closed (the manager stopped?)",
                              self.path)
        return _decode_reply(line, self.path)

    def close(self) -> None:
        self.sock.close()


def _connect(path: str, timeout: float | None) -> socket.socket:
    """Open a connection to the manager, turning OS errors into ClientError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise ClientError(
            f"cannot connect to {path}: No such file or directory {_NOT_RUNNING_HINT}", path
        ) from None
    except ConnectionRefusedError:
        sock.close()
        # The file exists but nobody listens: a manager that died without
        # cleaning up, or a path that is not the control socket at all.
        raise ClientError(
            f"cannot connect to {path}: Connection refused {_NOT_RUNNING_HINT}", path
        ) from None
    except PermissionError:
        sock.close()
        raise ClientError(
            f"permission denied on {path} (run as the user Gunicorn runs as, or root)", path
        ) from None
    except TimeoutError:
        sock.close()
        raise ClientError(f"timed out after {_seconds(timeout)} waiting for {path}", path) from None
    except (OSError, ValueError) as exc:
        # e.g. "AF_UNIX path too long", ENOTSOCK, or a NUL byte in the path.
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ClientError(f"cannot connect to {path}: {reason}", path) from None
    return sock


def _send(
    sock: socket.socket, path: str, request: dict, timeout: float | None, deadline: float | None
) -> None:
    """Write the request line."""
    data = encode(request)
    _set_remaining(sock, path, timeout, deadline)
    try:
        sock.sendall(data)
    except TimeoutError:
        raise ClientError(f"timed out after {_seconds(timeout)} waiting for {path}", path) from None
    except (BrokenPipeError, ConnectionResetError):
        raise ClientError(f"connection to {path} closed before a reply", path) from None
    except OSError as exc:
        raise ClientError(f"error talking to {path}: {exc.strerror or exc}", path) from None


def _lines(
    sock: socket.socket,
    path: str,
    decoder: LineDecoder,
    timeout: float | None,
    deadline: float | None,
) -> Iterator[bytes]:
    """Yield reply lines until the peer closes; raise ClientError on trouble."""
    while True:
        _set_remaining(sock, path, timeout, deadline)
        try:
            data = sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise ClientError(
                f"timed out after {_seconds(timeout)} waiting for {path}", path
            ) from None
        except ConnectionResetError:
            data = b""
        except OSError as exc:
            raise ClientError(f"error talking to {path}: {exc.strerror or exc}", path) from None
        if not data:
            return
        yield from decoder.feed(data)
        if decoder.overflowed:
            raise ClientError(
                f"invalid reply from {path}: a reply line is longer than {MAX_REPLY_LINE} bytes",
                path,
            )


def _set_remaining(
    sock: socket.socket, path: str, timeout: float | None, deadline: float | None
) -> None:
    """Make the next socket operation wait no longer than the overall deadline allows."""
    if deadline is None:
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ClientError(f"timed out after {_seconds(timeout)} waiting for {path}", path)
    sock.settimeout(remaining)


def _decode_reply(line: bytes, path: str) -> dict:
    """Parse one reply line into a dict or raise ClientError."""
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError) as exc:
        # Show the start of the line: it usually tells what is on the other end.
        preview = line[:80].decode("utf-8", "replace")
        raise ClientError(
            f"invalid reply from {path}: not JSON ({exc}): {preview!r}", path
        ) from None
    if not isinstance(reply, dict):
        raise ClientError(
            f"invalid reply from {path}: expected a JSON object, got {type(reply).__name__}", path
        )
    return reply


def _seconds(timeout: float | None) -> str:
    """Render a timeout the way the operator typed it: 5 -> '5s', 0.5 -> '0.5s'."""
    # Only reached with a timeout set: a None timeout never times out.
    return f"{timeout:g}s" if timeout is not None else "no limit"
