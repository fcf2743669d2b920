"""Output trouble never costs running work: a destination that fails or stalls
drops (and counts) or holds back lines, and nothing is restarted."""

import errno
import os
import re
import select
import shutil
import signal
import subprocess
import sys

import pytest
from support import status, wait_until

CLI = [sys.executable, "-m", "gunicorn_companion"]
FAILED = "Companion output to"  # start of the one message a failing destination logs


def conf(sock, companions):
    return (f"preload_app = True\nworkers = 1\ncompanion_control_socket = {str(sock)!r}\n"
            f"companion_workers = {companions}\n")




def dropped(sock, name) -> int:
    return status(sock)[name].get("output_dropped", 0)


def line_numbers(path, word="talk") -> list[int]:
    """The numbers of a talker's (or counter's) lines; every line must be whole.

    Read as a log shipper reads a file that is being written: up to its last
    newline. What follows it is a write in progress. On a full disk it is the
    start of a line the disk cut short, there until the manager truncates it
    away in the same loop turn: a reader polling the file sees it in about 2%
    of reads (measured: 11,199 of 570,985), and it failed this test once in
    the matrix. A cut line that stayed would be followed by the next line, so
    it is caught in the middle of the file all the same."""
    numbers = []
    text = path.read_text()
    for line in text[:text.rfind("\n") + 1].splitlines():
        first, number = line.split()
        assert first == word, line
        numbers.append(int(number))
    return numbers


def assert_nothing_restarted(srv, manager, names):
    assert srv.manager_pid() == manager
    for name in names:
        assert len(srv.starts(name)) == 1, f"{name} restarted: {srv.starts(name)}"
    assert "crashed" not in srv.log() and "Traceback" not in srv.log()


def test_usr1_after_the_log_directory_is_removed_drops_lines_and_restarts_nothing(
        server, sock_path, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    talk, quiet = logs / "talk.log", logs / "quiet.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "talk", "target": "compapp:talker", "stdout": {str(talk)!r}}},
        {{"name": "quiet", "target": "compapp:sleeper", "stdout": {str(quiet)!r}}}]"""))
    srv.wait_starts("talk")
    srv.wait_starts("quiet")
    manager = srv.wait_manager()
    srv.until(lambda: talk.exists() and "talk 2" in talk.read_text(), message="talk lines")

    shutil.rmtree(logs)  # a careless logrotate...
    srv.signal(signal.SIGUSR1)  # ...and its signal: the reopen fails
    srv.wait_log("Companion log files reopened")
    srv.until(lambda: dropped(sock_path, "talk") >= 5, message="dropped lines counted")
    assert srv.log().count(f"{FAILED} {talk} failed") == 1  # once, not once per line
    assert_nothing_restarted(srv, manager, ["talk", "quiet"])

    logs.mkdir()  # the next write retries: lines resume
    srv.until(lambda: talk.exists() and len(line_numbers(talk)) >= 3, message="lines to resume")
    srv.wait_log(f"{FAILED} {talk} works again")
    assert not quiet.exists()  # a quiet companion's file comes back...
    srv.signal(signal.SIGUSR1)  # ...on USR1
    srv.wait_log("Companion log files reopened", count=2)
    srv.until(quiet.exists, message="USR1 to reopen the quiet companion's file")
    assert_nothing_restarted(srv, manager, ["talk", "quiet"])
    assert dropped(sock_path, "quiet") == 0
    table = subprocess.run([*CLI, "-s", str(sock_path), "status"], capture_output=True,
                           text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    line = next(row for row in table.stdout.splitlines() if row.startswith("talk "))
    assert re.search(r"\b\d+ output lines? dropped\b", line), table.stdout


def test_a_directory_where_the_log_file_should_be(server, sock_path, tmp_path):
    talk = tmp_path / "talk.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "talk", "target": "compapp:talker", "stdout": {str(talk)!r}}}]"""))
    srv.wait_starts("talk")
    manager = srv.wait_manager()
    srv.until(lambda: talk.exists() and "talk 2" in talk.read_text(), message="talk lines")
    os.rename(talk, tmp_path / "talk.log.1")
    talk.mkdir()
    srv.signal(signal.SIGUSR1)
    srv.wait_log(f"{FAILED} {talk} failed")
    srv.until(lambda: dropped(sock_path, "talk") >= 3, message="dropped lines counted")
    talk.rmdir()
    srv.until(lambda: talk.exists() and len(line_numbers(talk)) >= 3, message="lines to resume")
    assert srv.log().count(f"{FAILED} {talk} failed") == 1
    assert_nothing_restarted(srv, manager, ["talk"])


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(path) -> None:
    """Write to ``path`` until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * 4096
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return


def test_a_disk_that_fills_up_and_frees_again(server, sock_path, small_disk):
    out = small_disk / "count.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "count", "target": "compapp:counter", "stdout": {str(out)!r}}},
        {{"name": "quiet", "target": "compapp:sleeper"}}]"""))
    srv.wait_starts("count")
    manager = srv.wait_manager()
    srv.until(lambda: out.exists() and "count 2" in out.read_text(), message="count lines")
    filler = small_disk / "filler"
    fill(filler)
    srv.until(lambda: dropped(sock_path, "count") >= 20, message="dropped lines counted")
    srv.wait_log(f"{FAILED} {out} failed")
    before = line_numbers(out, "count")  # every line whole, even the one the disk cut short
    filler.unlink()
    srv.until(lambda: len(line_numbers(out, "count")) > len(before) + 3,
              message="lines to resume")
    srv.wait_log(f"{FAILED} {out} works again")
    after = line_numbers(out, "count")
    assert after[:len(before)] == before and after == sorted(after)
    gap = after[len(before)] - before[-1] - 1  # the lines the full disk cost
    assert gap >= 20 and dropped(sock_path, "count") >= gap
    assert srv.log().count(f"{FAILED} {out} failed") == 1
    assert_nothing_restarted(srv, manager, ["count", "quiet"])


@pytest.fixture
def unread_stdout():
    """A pipe for the server's stdout, read only when the test says so."""
    read_end, write_end = os.pipe()
    pipe = {"read": read_end, "write": write_end}
    try:
        yield pipe
    finally:
        for fd in pipe.values():
            if fd is not None:
                os.close(fd)


def started_on(pipe, server, config):
    srv = server(config, stdout=pipe["write"])
    os.close(pipe["write"])  # the master holds it now: EOF once the server is gone
    pipe["write"] = None
    return srv


def wait_full(read_end):
    """Until the pipe takes no more: what its writer, the manager, sees.

    Counting bytes cannot tell: a pipe has 16 slots of a page, a write of a
    size that is no multiple of a page leaves its last slot part empty, and
    the pipe is full once every slot is taken, with bytes to spare. So ask the
    kernel, through a second write end of the same pipe (/proc)."""

    def full():
        probe = os.open(f"/proc/self/fd/{read_end}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            return not select.select([], [probe], [], 0)[1]
        finally:
            os.close(probe)

    wait_until(full, message="the stdout pipe to fill")


class PipeLines:
    """Whole lines from the read end of a pipe, as many as are asked for or more."""

    def __init__(self, fd):
        self.fd = fd
        self.partial = b""

    def take(self, count):
        data = self.partial
        while data.count(b"\n") < count:
            data += os.read(self.fd, 1 << 20)
        end = data.rfind(b"\n") + 1
        self.partial = data[end:]
        return data[:end].decode().splitlines()


def test_a_stdout_nobody_reads_holds_back_only_the_companions_writing_to_it(
        server, sock_path, unread_stdout):
    srv = started_on(unread_stdout, server, conf(sock_path, """[
        {"name": "flood", "target": "compapp:flooder", "stdout": "inherit"},
        {"name": "victim", "target": "compapp:sleeper"}]"""))
    wait_full(unread_stdout["read"])
    victim = srv.wait_starts("victim")[0]
    manager = srv.wait_manager()
    # the flood goes on until the manager holds its pipe back; the loop serves the rest
    srv.until(lambda: status(sock_path)["flood"]["state"] == "RUNNING",
              message="status to answer")
    os.kill(victim, signal.SIGKILL)
    srv.wait_starts("victim", 2)
    srv.until(lambda: status(sock_path)["victim"]["pid"] == srv.starts("victim")[1],
              message="the victim's restart in status")
    assert srv.manager_pid() == manager
    assert "output_dropped" not in status(sock_path)["flood"]  # held back, not dropped
    # once read again, the flood's lines flow, whole and in order
    numbers = [int(line.split()[1]) for line in PipeLines(unread_stdout["read"]).take(20000)]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_last_words_come_before_the_restart_even_while_stdout_is_held_back(
        server, sock_path, unread_stdout):
    srv = started_on(unread_stdout, server, conf(sock_path, """[
        {"name": "flood", "target": "compapp:flooder", "stdout": "inherit"},
        {"name": "w", "target": "compapp:last_words", "stdout": "inherit",
         "restart_delay": 0, "startsecs": 0}]"""))
    wait_full(unread_stdout["read"])
    pids = srv.wait_starts("w", 4)  # exits and restarts while nothing is read
    assert "output_dropped" not in status(sock_path)["w"]
    words, lines = [], PipeLines(unread_stdout["read"])
    while f"hello {pids[3]}" not in words:
        words += [line for line in lines.take(1000) if not line.startswith("flood ")]
    for first, second in zip(pids[:3], pids[1:4], strict=True):
        assert words.index(f"hello {first}") < words.index(f"bye {first}")
        assert words.index(f"bye {first}") < words.index(f"hello {second}")
