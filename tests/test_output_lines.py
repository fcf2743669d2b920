"""How output.Capture cuts a companion's bytes into lines, over a real pipe."""

from __future__ import annotations

import os

import pytest

from gunicorn_companion import output


class Written:
    """A destination that keeps what it is given (only ``write`` is used here)."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, pieces: list, name: str) -> None:
        self.chunks.append(b"".join(bytes(piece) for piece in pieces))


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    os.close(write_end)  # the read end is the Capture's to close


def test_a_line_without_a_newline_is_held_until_the_documented_64_kib(pipe):
    # docs/configuration.md: "a line longer than 64 KiB is written in pieces,
    # each ending in a newline"
    read_end, write_end = pipe
    written = Written()
    capture = output.Capture("c", "stdout", read_end, written, output.Ring(), None)
    os.write(write_end, b"x" * (64 * 1024 - 1))
    assert capture.drain()
    assert written.chunks == []  # one byte short: still waiting for its newline
    os.write(write_end, b"y")
    assert capture.drain()
    assert written.chunks == [b"x" * (64 * 1024 - 1) + b"y\n"]
    os.write(write_end, b"tail")
    assert capture.drain()
    capture.finish()  # a last line without its newline is completed at exit
    assert written.chunks[1:] == [b"tail\n"]
