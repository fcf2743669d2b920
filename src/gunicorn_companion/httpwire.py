"""HTTP/1.x on the wire, for the manager's metrics endpoint (pure).

Just enough of HTTP for a scraper, a browser and curl: the request line and
headers of a GET or HEAD, and a whole response to write back. One request per
connection (every response says ``Connection: close``), no request bodies,
no chunking: the socket side (webserver.py) stays a buffer, a deadline and a
close. Everything here is a function of bytes, tested by tables.
"""

from __future__ import annotations

from dataclasses import dataclass

# The request line and headers together; a browser sends well under 2 KiB.
# Past this a request is refused with 431 however much more the peer sends:
# the manager never buffers more than this per connection.
MAX_HEAD = 8 * 1024
METHODS = ("GET", "HEAD")

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: str
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: tuple[tuple[str, str], ...]  # names lowercased, in order


@dataclass(frozen=True)
class Refusal:
    """A request answered with an error status, then the connection closed."""

    status: int
    why: str


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_head(data: bytes, max_head: int = MAX_HEAD) -> Request | Refusal | None:
    """The request in ``data`` (what the peer sent so far): a Request once its
    head is complete, a Refusal when it is bad or too long, None while more is
    needed. Bytes after the head are ignored (GET and HEAD have no body)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        bare = data.find(b"\n\n")  # tolerated, as most servers do
        end, sep = (bare, 2) if bare >= 0 else (-1, 0)
    else:
        sep = 4
    if end < 0:
        if len(data) > max_head:
            return Refusal(431, f"request head longer than {max_head} bytes")
        return None
    if end + sep > max_head:
        return Refusal(431, f"request head longer than {max_head} bytes")
    try:
        text = data[:end].decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return Refusal(400, "undecodable request head")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return Refusal(400, "malformed request line")
    method, target, version = parts
    if not set(method) <= _TOKEN:
        return Refusal(400, "malformed method")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        if version.startswith("HTTP/") and version[5:6].isdigit():
            return Refusal(505, f"{version} is not supported; use HTTP/1.1")
        return Refusal(400, "malformed HTTP version")
    if not target.startswith("/"):
        return Refusal(400, "the request target must be a path starting with /")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _TOKEN:
            return Refusal(400, "malformed header line")
        headers.append((name.lower(), value.strip(" \t")))
    if method not in METHODS:
        return Refusal(405, f"method {method} not allowed; use GET or HEAD")
    path, _, query = target.partition("?")
    return Request(method, path, query, version, tuple(headers))


@dataclass(frozen=True)
class BindAddress:
    """Where the metrics endpoint listens: a TCP host and port, or a UNIX path."""

    text: str  # as written
    host: str | None = None
    port: int | None = None
    path: str | None = None


def parse_bind(value: str) -> BindAddress:
    """``host:port``, ``[v6]:port`` or ``unix:/path``; ValueError says what is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected host:port, [ipv6]:port or unix:/path, got {value!r}")
    text = value.strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"unix: needs an absolute path, got {value!r}")
        if len(path.encode()) > 107:
            raise ValueError(f"the UNIX socket path is too long (at most 107 bytes): {value!r}")
        return BindAddress(text, path=path)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or ":" not in host:
            raise ValueError(f"expected [ipv6]:port, got {value!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host or ":" in host:
            raise ValueError(f"expected host:port, [ipv6]:port or unix:/path, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, got {value!r}")
    if not all(c.isalnum() or c in ".-:_%" for c in host):
        raise ValueError(f"malformed host in {value!r}")
    return BindAddress(text, host=host, port=int(port_text))


def response(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
             *, head_only: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response; the connection closes after it."""
    lines = [f"HTTP/1.1 {status} {REASONS[status]}",
             f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}",
             "Cache-Control: no-store",
             "Connection: close"]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    lines.extend(f"{name}: {value}" for name, value in extra)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def refusal_response(refusal: Refusal) -> bytes:
    return response(refusal.status, (refusal.why + "\n").encode())
