"""Tests for the control protocol codec: framing, request validation, replies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gunicorn_companion.protocol import (
    COMMANDS,
    ERROR_CODES,
    MAX_LINE,
    LineDecoder,
    ProtocolError,
    Request,
    encode,
    error,
    ok,
    parse_request,
)

# -- encode ------------------------------------------------------------------


def test_encode_is_one_compact_ascii_line():
    data = encode({"cmd": "start", "name": "sch\u00e9duler\nx"})
    assert data == b'{"cmd":"start","name":"sch\\u00e9duler\\nx"}\n'
    assert data.count(b"\n") == 1
    assert json.loads(data) == {"cmd": "start", "name": "sch\u00e9duler\nx"}


def test_ok_and_error_replies():
    assert ok() == {"ok": True}
    assert ok(message="started", pid=12) == {"ok": True, "message": "started", "pid": 12}
    assert error("no_such_companion", "no such companion 'x'") == {
        "ok": False, "code": "no_such_companion", "error": "no such companion 'x'"}


def test_error_codes_are_all_documented():
    # docs/control.md lists every code in its table of errors
    docs = (Path(__file__).parent.parent / "docs" / "control.md").read_text()
    table = docs[docs.index("## Errors"):docs.index("## The `gunicorn-companion` CLI")]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.MULTILINE))
    assert documented == ERROR_CODES


@pytest.mark.parametrize("code", ["", "no such companion", "No_Such_Companion", None])
def test_an_error_without_a_known_code_is_a_bug(code):
    with pytest.raises(AssertionError):
        error(code, "message")
    with pytest.raises(AssertionError):
        ProtocolError(code, "message")


def test_commands_table():
    assert COMMANDS == {
        "status": False,
        "start": True,
        "stop": True,
        "restart": True,
        "reread": False,
        "tail": True,
        "events": False,
    }


# -- LineDecoder: tables -------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b""], []),
        ([b"a"], []),
        ([b"a\n"], [b"a"]),
        ([b"a\r\n"], [b"a"]),
        ([b"a\r\r\n"], [b"a\r"]),  # only one CR belongs to the line ending
        ([b"a\nb\n"], [b"a", b"b"]),
        ([b"a\nb"], [b"a"]),
        ([b"a\nb", b"c\n"], [b"a", b"bc"]),
        ([b"a", b"b", b"\n"], [b"ab"]),
        ([b"a\r", b"\n"], [b"a"]),  # CRLF split across reads
        ([b"\n\n\r\n  \n\t\r\n"], []),  # blank lines are skipped
        ([b"\n", b"x\n", b"\n"], [b"x"]),
        ([b"  x  \n"], [b"  x  "]),  # only blank lines are dropped; content is untouched
        ([b"\xff\xfe\n"], [b"\xff\xfe"]),  # bytes, not text: decoding is parse_request's job
        ([b"\x00\n"], [b"\x00"]),
    ],
)
def test_decoder_table(chunks, expected):
    decoder = LineDecoder()
    got = []
    for chunk in chunks:
        got.extend(decoder.feed(chunk))
    assert got == expected
    assert not decoder.overflowed


def test_decoder_accepts_a_line_of_exactly_max_line():
    line = b"x" * MAX_LINE
    decoder = LineDecoder()
    assert decoder.feed(line) == []
    assert not decoder.overflowed
    assert decoder.feed(b"\r") == []  # MAX_LINE bytes + CR may still end as a legal line
    assert not decoder.overflowed
    assert decoder.feed(b"\n") == [line]
    assert not decoder.overflowed


def test_the_line_limit_is_the_documented_64_kib():
    # docs/control.md promises 65536 bytes; the tests above take the constant,
    # so only this one notices the limit itself changing
    assert MAX_LINE == 65536
    decoder = LineDecoder()
    assert decoder.feed(b"x" * 65536 + b"\n") == [b"x" * 65536]
    assert decoder.feed(b"x" * 65537 + b"\n") == []
    assert decoder.overflowed


def test_decoder_refuses_a_complete_line_over_max_line():
    decoder = LineDecoder()
    assert decoder.feed(b"first\n" + b"x" * (MAX_LINE + 1) + b"\nlast\n") == [b"first"]
    assert decoder.overflowed


def test_decoder_refuses_a_pending_tail_over_max_line():
    decoder = LineDecoder()
    assert decoder.feed(b"first\n" + b"x" * MAX_LINE) == [b"first"]
    assert not decoder.overflowed
    assert decoder.feed(b"y") == []
    assert decoder.overflowed


def test_decoder_refuses_a_tail_of_max_line_plus_cr_followed_by_more():
    decoder = LineDecoder()
    decoder.feed(b"x" * MAX_LINE + b"\r")
    assert not decoder.overflowed
    assert decoder.feed(b"y") == []
    assert decoder.overflowed


def test_decoder_returns_nothing_forever_after_overflow():
    decoder = LineDecoder(max_line=4)
    assert decoder.feed(b"ok\n12345") == [b"ok"]
    assert decoder.overflowed
    for chunk in (b"\n", b"fine\n", b"a\nb\nc\n", b""):
        assert decoder.feed(chunk) == []
    assert decoder.overflowed


def test_decoder_limit_is_configurable():
    decoder = LineDecoder(max_line=3)
    assert decoder.feed(b"abc\n") == [b"abc"]
    assert decoder.feed(b"abc\r\n") == [b"abc"]
    assert decoder.feed(b"abcd\n") == []
    assert decoder.overflowed


def test_decoder_buffer_stays_bounded_under_a_trickle():
    decoder = LineDecoder(max_line=100)
    for _ in range(100):
        assert decoder.feed(b"z") == []
    assert not decoder.overflowed
    assert decoder.feed(b"z") == []
    assert decoder.overflowed
    assert len(decoder._pending) == 0


# -- LineDecoder: properties -----------------------------------------------------


def _reference_split(data: bytes, max_line: int) -> tuple[list[bytes], bool]:
    """The decoder's contract, written the obvious way for whole input."""
    *complete, tail = data.split(b"\n")
    lines = []
    for line in complete:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > max_line:
            return lines, True
        if line.strip():
            lines.append(line)
    return lines, len(tail) - tail.endswith(b"\r") > max_line


# Plain st.binary() almost never produces the bytes that matter here.
_framing_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b" ", b"\t", b"a", b"{}", b"\xff", b"\x00"])
    | st.binary(max_size=12),
    max_size=40,
).map(b"".join)


def _feed_in_pieces(decoder: LineDecoder, data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    got = []
    start = 0
    for point in [*points, len(data)]:
        got.extend(decoder.feed(data[start:point]))
        start = point
    return got


@settings(max_examples=400, deadline=None)
@given(
    data=_framing_bytes | st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=250), max_size=20),
    max_line=st.sampled_from([1, 3, 8, 32, MAX_LINE]),
)
def test_any_split_gives_the_same_lines_as_the_whole_input(data, cuts, max_line):
    pieces = LineDecoder(max_line=max_line)
    got = _feed_in_pieces(pieces, data, cuts)

    whole = LineDecoder(max_line=max_line)
    assert got == whole.feed(data)
    assert pieces.overflowed == whole.overflowed
    assert (got, pieces.overflowed) == _reference_split(data, max_line)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=30))
def test_feeding_arbitrary_bytes_never_raises(chunks):
    decoder = LineDecoder(max_line=16)
    for chunk in chunks:
        lines = decoder.feed(chunk)
        assert all(isinstance(line, bytes) and b"\n" not in line for line in lines)
        assert all(line.strip() for line in lines)
        assert all(len(line) <= 16 for line in lines)


# -- parse_request: tables -------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"cmd":"status"}', Request("status", None, {"cmd": "status"})),
        (b'  {"cmd": "reread"}  ', Request("reread", None, {"cmd": "reread"})),
        (
            b'{"cmd":"start","name":"beat"}',
            Request("start", "beat", {"cmd": "start", "name": "beat"}),
        ),
        (b'{"cmd":"stop","name":"beat"}', Request("stop", "beat", {"cmd": "stop", "name": "beat"})),
        (
            b'{"cmd":"restart","name":"q@1"}',
            Request("restart", "q@1", {"cmd": "restart", "name": "q@1"}),
        ),
        # Unknown fields are kept for later versions, not refused.
        (
            b'{"cmd":"status","verbose":true}',
            Request("status", None, {"cmd": "status", "verbose": True}),
        ),
        # A name on a command that does not need one is passed through.
        (
            b'{"cmd":"status","name":"beat"}',
            Request("status", "beat", {"cmd": "status", "name": "beat"}),
        ),
        (b'{"cmd":"status","name":null}', Request("status", None, {"cmd": "status", "name": None})),
        (
            '{"cmd":"start","name":"sch\u00e9"}'.encode(),
            Request("start", "sch\u00e9", {"cmd": "start", "name": "sch\u00e9"}),
        ),
    ],
)
def test_parse_request_accepts(line, expected):
    assert parse_request(line) == expected


_KNOWN = "known commands: status, start, stop, restart, reread, tail, events"


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        (b"\xff", "not_utf8", "request is not valid UTF-8 (byte 0xff at offset 0)"),
        (b'{"cmd":"st\xc3"}', "not_utf8", "request is not valid UTF-8 (byte 0xc3 at offset 10)"),
        (b"", "not_json", "request is not valid JSON: Expecting value at column 1"),
        (b"status", "not_json", "request is not valid JSON: Expecting value at column 1"),
        (
            b'{"cmd":"status"',
            "not_json",
            "request is not valid JSON: Expecting ',' delimiter at column 16",
        ),
        (b'{"cmd":"status"} x', "not_json", "request is not valid JSON: Extra data at column 18"),
        (b"[" * 100_000, "not_json", "request is not valid JSON: it is nested too deeply"),
        (b"[]", "not_an_object",
         'request must be a JSON object like {"cmd": "status"}, got a list'),
        (
            b'"status"',
            "not_an_object",
            'request must be a JSON object like {"cmd": "status"}, got a string (\'status\')',
        ),
        (b"3", "not_an_object",
         'request must be a JSON object like {"cmd": "status"}, got a number (3)'),
        (b"null", "not_an_object",
         'request must be a JSON object like {"cmd": "status"}, got null'),
        (b"true", "not_an_object",
         'request must be a JSON object like {"cmd": "status"}, got a boolean (true)'),
        (b"{}", "missing_field", f'request has no "cmd" field; {_KNOWN}'),
        (b'{"command":"status"}', "missing_field", f'request has no "cmd" field; {_KNOWN}'),
        (b'{"cmd":5}', "bad_field", f'"cmd" must be a string, got a number (5); {_KNOWN}'),
        (b'{"cmd":null}', "bad_field", f'"cmd" must be a string, got null; {_KNOWN}'),
        (b'{"cmd":["status"]}', "bad_field", f'"cmd" must be a string, got a list; {_KNOWN}'),
        (b'{"cmd":"stauts"}', "unknown_command",
         f"unknown command 'stauts' (did you mean 'status'?); {_KNOWN}"),
        (b'{"cmd":"STATUS"}', "unknown_command",
         f"unknown command 'STATUS' (did you mean 'status'?); {_KNOWN}"),
        (b'{"cmd":"restrat"}', "unknown_command",
         f"unknown command 'restrat' (did you mean 'restart'?); {_KNOWN}"),
        (b'{"cmd":"xyzzy"}', "unknown_command", f"unknown command 'xyzzy'; {_KNOWN}"),
        (b'{"cmd":""}', "unknown_command", f"unknown command ''; {_KNOWN}"),
        (
            b'{"cmd":"start"}',
            "missing_field",
            (
                "command 'start' needs a \"name\" field naming a companion, "
                'e.g. {"cmd": "start", "name": "scheduler"}'
            ),
        ),
        (
            b'{"cmd":"stop","name":null}',
            "missing_field",
            (
                "command 'stop' needs a \"name\" field naming a companion, "
                'e.g. {"cmd": "stop", "name": "scheduler"}'
            ),
        ),
        (
            b'{"cmd":"restart"}',
            "missing_field",
            (
                "command 'restart' needs a \"name\" field naming a companion, "
                'e.g. {"cmd": "restart", "name": "scheduler"}'
            ),
        ),
        (b'{"cmd":"start","name":7}', "bad_field", '"name" must be a string, got a number (7)'),
        (b'{"cmd":"start","name":false}', "bad_field",
         '"name" must be a string, got a boolean (false)'),
        (b'{"cmd":"start","name":["a"]}', "bad_field", '"name" must be a string, got a list'),
        (b'{"cmd":"start","name":{}}', "bad_field", '"name" must be a string, got an object'),
        (b'{"cmd":"status","name":1}', "bad_field", '"name" must be a string, got a number (1)'),
        (b'{"cmd":"start","name":""}', "bad_field", "\"name\" must not be empty (got '')"),
        (b'{"cmd":"start","name":"  "}', "bad_field", "\"name\" must not be empty (got '  ')"),
    ],
)
def test_parse_request_refuses(line, code, message):
    result = parse_request(line)
    assert result == ProtocolError(code, message)


def test_parse_request_truncates_long_values_in_messages():
    result = parse_request(encode({"cmd": "x" * 10_000})[:-1])
    assert isinstance(result, ProtocolError)
    assert len(result.message) < 200
    assert "..." in result.message


@pytest.mark.parametrize(
    ("cmd", "shown"),
    [
        # repr() of at most 60 characters is shown whole...
        ("x" * 58, repr("x" * 58)),
        # ...a longer one is cut to 57 characters and "...", 60 in all
        ("x" * 59, "'" + "x" * 56 + "..."),
        ("y" * 10_000, "'" + "y" * 56 + "..."),
    ],
)
def test_parse_request_shows_at_most_60_characters_of_a_value(cmd, shown):
    result = parse_request(encode({"cmd": cmd})[:-1])
    assert result == ProtocolError("unknown_command", f"unknown command {shown}; known commands: "
                                   + ", ".join(COMMANDS))


def test_parse_request_handles_huge_integers():
    result = parse_request(b'{"cmd":' + b"9" * 10_000 + b"}")
    assert isinstance(result, ProtocolError)
    assert result == ProtocolError(
        "not_json", "request is not valid JSON: it holds a number too long to read")


def test_parse_request_accepts_what_the_decoder_splits():
    decoder = LineDecoder()
    lines = decoder.feed(b'{"cmd":"status"}\r\n\n{"cmd":"stop","name":"beat"}\n')
    assert [parse_request(line) for line in lines] == [
        Request("status", None, {"cmd": "status"}),
        Request("stop", "beat", {"cmd": "stop", "name": "beat"}),
    ]


def test_request_is_hashable_and_frozen():
    request = Request("start", "beat", {"cmd": "start", "name": "beat"})
    assert hash(request) == hash(Request("start", "beat", {"cmd": "start", "name": "beat"}))
    with pytest.raises(AttributeError):
        request.cmd = "stop"  # type: ignore[misc]


# -- parse_request: properties -----------------------------------------------------


def _check_result(result):
    assert isinstance(result, (Request, ProtocolError))
    if isinstance(result, Request):
        assert result.cmd in COMMANDS
        assert isinstance(result.raw, dict)
        if COMMANDS[result.cmd]:
            assert isinstance(result.name, str) and result.name.strip()
    else:
        assert isinstance(result.message, str) and result.message
        assert "\n" not in result.message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_request_of_arbitrary_bytes_never_raises(line):
    _check_result(parse_request(line))


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=10)
    | st.sampled_from(list(COMMANDS)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["cmd", "name", "x"]) | st.text(max_size=5), children)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(
    obj=st.dictionaries(
        st.sampled_from(["cmd", "name", "extra"]),
        _json_values,
    )
    | _json_values
)
def test_parse_request_of_arbitrary_json_never_raises(obj):
    _check_result(parse_request(json.dumps(obj).encode()))


@settings(max_examples=300, deadline=None)
@given(
    cmd=st.sampled_from(list(COMMANDS)),
    name=st.text(min_size=1, max_size=30).filter(str.strip),
    extra=st.dictionaries(
        st.text(max_size=5).filter(lambda k: k not in ("cmd", "name")),
        st.integers() | st.text(max_size=5),
        max_size=3,
    ),
)
def test_valid_requests_round_trip_through_the_wire(cmd, name, extra):
    obj = {**extra, "cmd": cmd, "name": name}
    lines = LineDecoder().feed(encode(obj))
    assert len(lines) == 1
    assert parse_request(lines[0]) == Request(cmd, name, obj)
