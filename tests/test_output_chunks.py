"""The manager's output path works on whole reads, not lines: what reaches the
file, the ring for ``tail`` and the pipe sizes, through real pipes and files."""

import fcntl
import logging
import os
import selectors

import pytest

from gunicorn_companion import output
from gunicorn_companion.output import MAX_LINE, TAIL_LINES, BigPipes, Capture, LogFile, OutputRouter

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
STAMP = "%Y"


@pytest.fixture
def router():
    selector = selectors.DefaultSelector()
    yield OutputRouter(selector, logging.getLogger("test"))
    selector.close()


def capture_to_file(router, path, stamp=None, big_pipes=None):
    """A companion's pipe read into a log file: (write end, capture)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    sink = LogFile(str(path), selector=router.selector, log=router.log, dropped=router.dropped)
    capture = Capture("c", "stdout", read_fd, sink, router.ring("c"), stamp)
    router.watch(capture, lambda key, mask: None)
    if big_pipes is not None:
        capture.big_pipes = big_pipes
    return write_fd, capture


def feed(capture, write_fd, writes):
    """Each write read before the next, as a companion's writes often are."""
    os.set_blocking(write_fd, False)
    for data in writes:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(write_fd, view):]
            except BlockingIOError:
                capture.read()
        capture.read()
    os.close(write_fd)
    while capture.read():
        pass
    capture.finish()
    capture.destination.close()


@pytest.mark.parametrize("writes, expected", [
    ([b"one\ntwo\n"], b"one\ntwo\n"),
    ([b"on", b"e\ntw", b"o\n"], b"one\ntwo\n"),
    ([b"no newline at the end"], b"no newline at the end\n"),
    ([b"a\n", b"", b"b"], b"a\nb\n"),
    ([b"x" * (MAX_LINE - 1), b"y\nz\n"], b"x" * (MAX_LINE - 1) + b"y\nz\n"),
    # a line that never ends is written once it reaches MAX_LINE, cut there
    ([b"x" * 40000, b"x" * 40000, b"\n"], b"x" * 80000 + b"\n\n"),
    # a carriage return (a progress bar) is part of its line
    ([b"10%\r50%\r100%\n"], b"10%\r50%\r100%\n"),
])
def test_the_file_gets_every_byte_in_whole_lines(router, tmp_path, writes, expected):
    write_fd, capture = capture_to_file(router, tmp_path / "c.log")
    feed(capture, write_fd, writes)
    assert (tmp_path / "c.log").read_bytes() == expected


@pytest.mark.parametrize("writes, lines", [
    ([b"one\ntwo\n"], [b"one", b"two"]),
    ([b"on", b"e\ntw", b"o\nthree"], [b"one", b"two", b"three"]),
    # found failing before whole reads: each \r-separated piece got its own stamp
    ([b"10%\r50%\r100%\n"], [b"10%\r50%\r100%"]),
])
def test_time_stamps_start_every_line_and_only_lines(router, tmp_path, writes, lines):
    write_fd, capture = capture_to_file(router, tmp_path / "c.log", stamp=STAMP)
    feed(capture, write_fd, writes)
    written = (tmp_path / "c.log").read_bytes()
    assert written.endswith(b"\n")
    for line, want in zip(written[:-1].split(b"\n"), lines, strict=True):
        stamp, _, text = line.partition(b" ")
        assert stamp.isdigit() and len(stamp) == 4, line
        assert text == want


@pytest.mark.parametrize("chunks, count, expected", [
    ([b"a\nb\n", b"c\n"], 2, ["b", "c"]),
    ([b"a\nb\n", b"c\n"], 10, ["a", "b", "c"]),
    ([b"a\n"], 0, []),
    ([b"caf\xc3\xa9\n", b"\xff\n"], 5, ["café", "\ufffd"]),
    # more than TAIL_LINES: never more than that many, the newest
    ([b"%d\n" % n for n in range(3 * TAIL_LINES)], 5 * TAIL_LINES,
     [str(n) for n in range(2 * TAIL_LINES, 3 * TAIL_LINES)]),
    ([b"".join(b"%d\n" % n for n in range(k, k + 700)) for k in range(0, 7000, 700)], 3,
     ["6997", "6998", "6999"]),
])
def test_tail_is_the_newest_lines_whatever_the_reads(router, chunks, count, expected):
    ring = router.ring("c")
    for n, chunk in enumerate(chunks):
        # pieces as Capture hands them over: an unfinished line, then a view
        ring.add(n, "c", "stdout", [chunk[:1], memoryview(chunk)[1:]])
    assert router.tail(["c"], count) == expected


@pytest.mark.parametrize("line_bytes, per_read, reads", [
    (100, 7, 20000),  # small reads
    (100, 3000, 100),  # big reads (1 MiB pipes): the end of one holds enough
    (2000, 300, 100),  # long lines: the end of a read does not
])
def test_the_ring_keeps_enough_lines_and_not_everything(router, line_bytes, per_read, reads):
    ring = router.ring("c")
    for n in range(reads):
        lines = b"".join(b"%0*d\n" % (line_bytes - 1, n * per_read + i) for i in range(per_read))
        ring.add(n, "c", "stdout", [lines[:50], memoryview(lines)[50:]])
    last = reads * per_read
    assert router.tail(["c"], TAIL_LINES) == [
        str(i).zfill(line_bytes - 1) for i in range(last - TAIL_LINES, last)]
    newest_needed = TAIL_LINES * line_bytes + per_read * line_bytes
    assert ring.size <= 2 * max(output.TAIL_BYTES, newest_needed)


def test_since_returns_each_read_once_in_order_across_companions(router):
    router.ring("a").add(1, "a", "stdout", [b"a1\na2\n"])
    router.ring("b").add(2, "b", "stdout", [b"b1\n"])
    lines, newest = router.since(["a", "b"], -1)
    assert lines == ["a: a1", "a: a2", "b: b1"] and newest == 2
    router.ring("a").add(3, "a", "stdout", [b"a3\n"])
    assert router.since(["a", "b"], newest) == (["a: a3"], 3)
    assert router.since(["a", "b"], 3) == ([], 3)


def pipe_size(fd) -> int:
    return fcntl.fcntl(fd, F_GETPIPE_SZ)


def test_a_pipe_found_full_is_enlarged_within_the_budget_and_given_back(router, tmp_path):
    budget = BigPipes(limit=1)
    chatty_w, chatty = capture_to_file(router, tmp_path / "chatty.log", big_pipes=budget)
    other_w, other = capture_to_file(router, tmp_path / "other.log", big_pipes=budget)
    quiet_w, quiet = capture_to_file(router, tmp_path / "quiet.log", big_pipes=budget)
    default = pipe_size(chatty.fd)
    for fd in (chatty_w, other_w):
        os.set_blocking(fd, False)
        os.write(fd, b"x" * 99 + b"\n" + b"y" * (default - 100))  # fills it
    os.write(quiet_w, b"a line\n")
    for capture in (chatty, other, quiet):
        assert capture.read()
    assert pipe_size(chatty.fd) == output.BIG_PIPE_SIZE  # full: enlarged
    assert pipe_size(other.fd) == default  # full too, but the budget is spent
    assert pipe_size(quiet.fd) == default  # never full
    assert budget.free == 0
    for fd in (chatty_w, other_w, quiet_w):
        os.close(fd)
    for capture in (chatty, other, quiet):
        while capture.read():
            pass
        capture.finish()
        capture.destination.close()
    assert budget.free == 1


def enlarged_capture(router, path):
    """A capture whose pipe was found full, so it is enlarged and read into
    the capture's own buffer from then on: (write end, capture, what the
    filling wrote)."""
    write_fd, capture = capture_to_file(router, path)
    fill = b"f" * (pipe_size(capture.fd) - 1) + b"\n"
    os.write(write_fd, fill)
    assert capture.read()
    assert pipe_size(capture.fd) == output.BIG_PIPE_SIZE and capture.buffer is not None
    return write_fd, capture, fill


LINES = [b"%06d %s\n" % (n, b"x" * 92) for n in range(30000)]  # 100 bytes each


@pytest.mark.parametrize("writes, expected", [
    ([b"one\ntwo\n"], b"one\ntwo\n"),
    ([b"on", b"e\ntw", b"o\n"], b"one\ntwo\n"),
    ([b"no newline at the end"], b"no newline at the end\n"),
    ([b"x" * (MAX_LINE - 1), b"y\nz\n"], b"x" * (MAX_LINE - 1) + b"y\nz\n"),
    ([b"x" * 40000, b"x" * 40000, b"\n"], b"x" * 80000 + b"\n\n"),
    # a flood in the producer's 100 kB writes, reads ending mid-line
    ([b"".join(LINES[k:k + 1000]) for k in range(0, 30000, 1000)], b"".join(LINES)),
    ([b"".join(LINES)[k:k + 77777] for k in range(0, 3000000, 77777)], b"".join(LINES)),
])
def test_an_enlarged_pipe_gets_every_byte_in_whole_lines(router, tmp_path, writes, expected):
    write_fd, capture, fill = enlarged_capture(router, tmp_path / "c.log")
    feed(capture, write_fd, writes)
    assert (tmp_path / "c.log").read_bytes() == fill + expected


@pytest.mark.parametrize("line_bytes", [100, 1000, 200 * 1024])
def test_tail_after_a_flood_through_an_enlarged_pipe_is_the_newest_lines_in_order(
        router, tmp_path, line_bytes):
    write_fd, capture, _ = enlarged_capture(router, tmp_path / "c.log")
    count = 3 * 1024 * 1024 // line_bytes
    lines = [b"%07d " % n + b"x" * (line_bytes - 9) + b"\n" for n in range(count)]
    os.set_blocking(write_fd, False)
    data = memoryview(b"".join(lines))
    while data:
        try:
            data = data[os.write(write_fd, data):]
        except BlockingIOError:
            capture.read()
    while capture.read() and capture.partial:
        pass
    tail = router.tail(["c"], TAIL_LINES)
    assert tail, "the ring keeps the newest lines of a flood"
    newest = [line.decode().rstrip("\n") for line in lines[-len(tail):]]
    if line_bytes < MAX_LINE:
        assert tail == newest  # the newest lines, none missing between them
    else:  # longer than MAX_LINE: written in pieces, and tail shows the newest one's end
        assert tail[-1].encode() in b"".join(lines)
    os.close(write_fd)
    while capture.read():
        pass
    capture.finish()
    capture.destination.close()
