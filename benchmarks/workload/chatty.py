"""A program that prints 100-byte lines as fast as it can: the output benchmark.

It waits for the file CHATTY_GO to exist (so the supervising process's CPU is
read before the first line), then writes numbered lines to stdout for
CHATTY_SECONDS seconds, appends one JSON record of what it wrote to
CHATTY_DONE, and idles until SIGTERM (exiting would make its supervisor
restart it and print again). A line is::

    chatty-0 000000000042 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx(...)xxxxxx

exactly LINE_BYTES bytes with its newline, so a line that was lost (a gap in
the numbers) or torn (cut, joined with another, interleaved) is found by
reading the files back (``check_lines``).

``workload.chatty:main`` is the companion target; ``python -m workload.chatty``
the standalone program supervisord and circus run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

LINE_BYTES = 100
BATCH = 1000  # lines per write(): the writer must not be what limits the rate


def line_prefix(name: str) -> bytes:
    return name.encode() + b" "


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    name = os.environ.get("WORKLOAD_NAME") or os.environ.get("GUNICORN_COMPANION_NAME") or "chatty"
    seconds = float(os.environ.get("CHATTY_SECONDS", "2"))
    go, done = os.environ["CHATTY_GO"], os.environ["CHATTY_DONE"]
    while not os.path.exists(go):
        time.sleep(0.01)
    prefix = line_prefix(name)
    pad = b"x" * (LINE_BYTES - 1 - len(prefix) - 13)
    template = prefix + b"%012d " + pad + b"\n"
    number = 0
    started = time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        batch = b"".join(template % n for n in range(number, number + BATCH))
        view = memoryview(batch)
        while view:
            view = view[os.write(1, view):]
        number += BATCH
    finished = time.monotonic()
    record = {"name": name, "lines": number, "started": started, "finished": finished}
    with open(done, "a") as f:
        f.write(json.dumps(record) + "\n")
    while True:
        time.sleep(3600)


def check_lines(paths: list[str], name: str, written: int, stamped: bool) -> tuple[int, int, int]:
    """(lines found, lost, torn) in a program's log file and its backups.

    The files hold the newest lines (older ones were rotated away): every
    number from the first one found up to ``written - 1`` must be there once,
    in order, each line whole. A line that is not exactly one of ours (after
    a time stamp, when ``stamped``) counts as torn; a number missing from that
    range counts as lost."""
    prefix = line_prefix(name)
    stamp = re.compile(rb"^.{0,40}? (?=" + re.escape(prefix) + rb")") if stamped else None
    expected_tail = b"x" * (LINE_BYTES - 1 - len(prefix) - 13)
    numbers: list[int] = []
    torn = 0
    for path in paths:  # oldest first
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            torn += 1  # a file that ends without a newline
            lines.pop()
        for line in lines:
            if stamp is not None:
                match = stamp.match(line)
                if match is None:
                    torn += 1
                    continue
                line = line[match.end():]
            if (len(line) != LINE_BYTES - 1 or not line.startswith(prefix)
                    or not line.endswith(expected_tail)):
                torn += 1
                continue
            try:
                numbers.append(int(line[len(prefix):len(prefix) + 12]))
            except ValueError:
                torn += 1
    if not numbers:
        return 0, written, torn
    distinct = set(numbers)
    torn += len(numbers) - len(distinct)  # a line written twice is not a whole line either
    lost = (written - min(distinct)) - len(distinct)
    return len(numbers), lost, torn


if __name__ == "__main__":
    main()
