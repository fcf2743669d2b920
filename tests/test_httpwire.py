"""HTTP on the wire for the metrics endpoint (httpwire.py): tables, no sockets."""

import re

import pytest

from gunicorn_companion import httpwire
from gunicorn_companion.httpwire import Refusal, Request

HEAD_CASES = [
    ("a GET", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
     Request("GET", "/metrics", "", "HTTP/1.1", (("host", "x"),))),
    ("HEAD, HTTP/1.0, a query", b"HEAD /?a=1 HTTP/1.0\r\n\r\n",
     Request("HEAD", "/", "a=1", "HTTP/1.0", ())),
    ("bare newlines", b"GET / HTTP/1.1\nAccept: */*\n\n",
     Request("GET", "/", "", "HTTP/1.1", (("accept", "*/*"),))),
    ("header names lowercased, values trimmed", b"GET / HTTP/1.1\r\nX-Y:  v \r\n\r\n",
     Request("GET", "/", "", "HTTP/1.1", (("x-y", "v"),))),
    ("a body after the head is ignored", b"GET / HTTP/1.1\r\n\r\ngarbage",
     Request("GET", "/", "", "HTTP/1.1", ())),
    ("incomplete: no blank line yet", b"GET / HTTP/1.1\r\nHost: x\r\n", None),
    ("incomplete: nothing yet", b"", None),
    ("POST", b"POST / HTTP/1.1\r\n\r\n", Refusal(405, "method POST not allowed; use GET or HEAD")),
    ("unknown method", b"BREW / HTTP/1.1\r\n\r\n",
     Refusal(405, "method BREW not allowed; use GET or HEAD")),
    ("two words", b"GET /\r\n\r\n", Refusal(400, "malformed request line")),
    ("four words", b"GET / x HTTP/1.1\r\n\r\n", Refusal(400, "malformed request line")),
    ("method with a bad byte", b"G(T / HTTP/1.1\r\n\r\n", Refusal(400, "malformed method")),
    ("HTTP/2", b"GET / HTTP/2.0\r\n\r\n",
     Refusal(505, "HTTP/2.0 is not supported; use HTTP/1.1")),
    ("no version", b"GET / FOO\r\n\r\n", Refusal(400, "malformed HTTP version")),
    ("absolute URL", b"GET http://x/ HTTP/1.1\r\n\r\n",
     Refusal(400, "the request target must be a path starting with /")),
    ("header without colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
     Refusal(400, "malformed header line")),
    ("header name with space", b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
     Refusal(400, "malformed header line")),
    ("head longer than the limit, incomplete",
     b"GET / HTTP/1.1\r\nX: " + b"a" * httpwire.MAX_HEAD,
     Refusal(431, f"request head longer than {httpwire.MAX_HEAD} bytes")),
    ("head longer than the limit, complete",
     b"GET / HTTP/1.1\r\nX: " + b"a" * httpwire.MAX_HEAD + b"\r\n\r\n",
     Refusal(431, f"request head longer than {httpwire.MAX_HEAD} bytes")),
]


@pytest.mark.parametrize("data, expected", [c[1:] for c in HEAD_CASES],
                         ids=[c[0] for c in HEAD_CASES])
def test_parse_head(data, expected):
    assert httpwire.parse_head(data) == expected


def test_a_head_of_exactly_the_limit_is_accepted():
    start = b"GET / HTTP/1.1\r\nX: "
    data = start + b"a" * (httpwire.MAX_HEAD - len(start) - 4) + b"\r\n\r\n"
    assert len(data) == httpwire.MAX_HEAD
    assert isinstance(httpwire.parse_head(data), Request)
    assert httpwire.parse_head(data[:-4] + b"a\r\n\r\n").status == 431


BIND_CASES = [
    ("127.0.0.1:9191", ("127.0.0.1", 9191, None)),
    ("0.0.0.0:0", ("0.0.0.0", 0, None)),
    ("localhost:80", ("localhost", 80, None)),
    ("[::1]:9191", ("::1", 9191, None)),
    ("[fe80::1%eth0]:9191", ("fe80::1%eth0", 9191, None)),
    ("unix:/run/app/metrics.sock", (None, None, "/run/app/metrics.sock")),
    (" 127.0.0.1:9191 ", ("127.0.0.1", 9191, None)),
]


@pytest.mark.parametrize("text, expected", BIND_CASES)
def test_parse_bind(text, expected):
    address = httpwire.parse_bind(text)
    assert (address.host, address.port, address.path) == expected


BAD_BINDS = [
    ("", "expected host:port"),
    ("9191", "expected host:port"),
    ("127.0.0.1", "expected host:port"),
    (":9191", "expected host:port"),
    ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
    ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
    ("::1:9191", "expected host:port"),
    ("[::1]9191", "expected [ipv6]:port"),
    ("[127.0.0.1]:9191", "expected [ipv6]:port"),
    ("unix:relative.sock", "unix: needs an absolute path"),
    ("unix:/" + "x" * 200, "too long"),
    ("ho st:80", "malformed host"),
]


@pytest.mark.parametrize("text, message", BAD_BINDS)
def test_parse_bind_refuses(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        httpwire.parse_bind(text)


RESPONSE_CASES = [
    ("200", dict(status=200, body=b"hi", content_type="text/plain"),
     b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
     b"Cache-Control: no-store\r\nConnection: close\r\n\r\nhi"),
    ("HEAD: the length of the body, not the body", dict(status=200, body=b"hi",
                                                        content_type="text/plain",
                                                        head_only=True),
     b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
     b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"),
    ("405 says what is allowed", dict(status=405, body=b"", content_type="text/plain"),
     b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
     b"Cache-Control: no-store\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\n"),
]


@pytest.mark.parametrize("kwargs, expected", [c[1:] for c in RESPONSE_CASES],
                         ids=[c[0] for c in RESPONSE_CASES])
def test_response(kwargs, expected):
    assert httpwire.response(**kwargs) == expected


def test_refusal_response_says_why():
    data = httpwire.refusal_response(Refusal(431, "too long"))
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert data.endswith(b"\r\n\r\ntoo long\n")
