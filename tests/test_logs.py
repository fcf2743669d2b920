"""Captured output: files, rotation, timestamps, reopen on USR1, tail."""

import os
import re
import signal
import subprocess
import sys

from support import Control, wait_until

CLI = [sys.executable, "-m", "gunicorn_companion"]




def conf(sock, companions, extra=""):
    return (f"preload_app = True\nworkers = 1\ncompanion_control_socket = {str(sock)!r}\n"
            f"{extra}\ncompanion_workers = {companions}\n")


def rotated_lines(path, backups):
    """Every line of a rotated file set, oldest first."""
    files = [f"{path}.{n}" for n in range(backups, 0, -1)] + [str(path)]
    lines = []
    for name in files:
        if os.path.exists(name):
            with open(name) as f:
                lines += f.read().splitlines(keepends=True)
    return lines


def test_a_burst_rotates_without_losing_or_splitting_a_line(server, sock_path, tmp_path):
    out = tmp_path / "burst.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "burst", "target": "compapp:burster", "stdout": {str(out)!r},
          "stderr": {str(tmp_path / "burst.err")!r}, "stdout_maxbytes": "100KB",
          "stdout_backups": 40}}]"""), env={"BURST_LINES": "20000"})
    srv.until(lambda: (srv.state / "burst.done").exists(), message="the burst to be written")
    expected = [f"line {i:07d} {'x' * 80}\n" for i in range(20000)]
    wait_until(lambda: rotated_lines(out, 40)[-1:] == expected[-1:], message="the last line")
    assert rotated_lines(out, 40) == expected
    sizes = [os.path.getsize(f"{out}.{n}") for n in range(1, 40) if os.path.exists(f"{out}.{n}")]
    assert len(sizes) >= 15 and max(sizes) <= 100 * 1024
    err = (tmp_path / "burst.err").read_text().splitlines()
    assert err == [f"err {i:07d}" for i in range(0, 20000, 1000)]


def test_a_crashing_companions_last_words_come_before_its_restart(server, sock_path, tmp_path):
    out = tmp_path / "words.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "w", "target": "compapp:last_words", "stdout": {str(out)!r},
          "restart_delay": 0, "startsecs": 0}}]"""))
    pids = srv.wait_starts("w", 4)
    wait_until(lambda: f"bye {pids[2]}" in out.read_text())
    lines = out.read_text().splitlines()
    for first, second in zip(pids[:2], pids[1:3], strict=True):
        assert lines.index(f"bye {first}") < lines.index(f"hello {second}")
        assert lines.index(f"hello {first}") < lines.index(f"bye {first}")


def test_timestamps(server, sock_path, tmp_path):
    out = tmp_path / "t.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "t", "target": "compapp:talker", "stdout": {str(out)!r},
          "timestamps": True, "timestamp_format": "[%H:%M:%S]"}}]"""))
    srv.wait_starts("t")
    wait_until(lambda: out.exists() and out.read_text().count("\n") >= 3)
    for line in out.read_text().splitlines():
        assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] talk \d+", line), line


def test_usr1_reopens_companion_logs_for_logrotate(server, sock_path, tmp_path):
    out = tmp_path / "r.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "t", "target": "compapp:talker", "stdout": {str(out)!r}}}]"""))
    srv.wait_starts("t")
    wait_until(lambda: out.exists() and "talk 2" in out.read_text())
    moved = tmp_path / "r.log.moved"
    os.rename(out, moved)  # logrotate's move...
    srv.signal(signal.SIGUSR1)  # ...and signal
    srv.wait_log("Companion log files reopened")
    wait_until(lambda: out.exists() and out.read_text().count("talk") >= 2)
    before = int(moved.read_text().split()[-1])
    after = int(out.read_text().split()[1])
    assert after > before  # nothing lost, nothing repeated across the move
    assert after - before < 50


def test_tail_shows_recent_lines_of_captured_output_even_inherited(server, sock_path):
    srv = server(conf(sock_path, """[
        {"name": "t", "target": "compapp:talker", "stdout": "inherit"}]"""))
    srv.wait_starts("t")
    srv.wait_log("talk 5")  # inherited output still reaches Gunicorn's own stdout
    reply = Control(sock_path).request({"cmd": "tail", "name": "t", "lines": 3})
    assert reply["ok"] and len(reply["lines"]) == 3
    numbers = [int(line.split()[1]) for line in reply["lines"]]
    assert numbers == sorted(numbers) and numbers[-1] - numbers[0] == 2
    out = subprocess.run([*CLI, "-s", str(sock_path), "tail", "t", "-n", "2"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2
    assert Control(sock_path).request({"cmd": "tail", "name": "t", "lines": 0}) == {
        "ok": True, "lines": []}
    bad = Control(sock_path).request({"cmd": "tail", "name": "t", "lines": -1})
    assert bad == {"ok": False, "code": "bad_field",
                   "error": '"lines" must be a whole number from 0 to 1000, got -1'}


def test_tail_follow_streams_new_lines_until_the_client_leaves(server, sock_path):
    srv = server(conf(sock_path, """[
        {"name": "t", "target": "compapp:talker"}]"""))
    srv.wait_starts("t")
    follower = subprocess.Popen([*CLI, "-s", str(sock_path), "tail", "-f", "t", "-n", "1"],
                                stdout=subprocess.PIPE, text=True)
    try:
        seen = [follower.stdout.readline() for _ in range(5)]
        numbers = [int(line.split()[1]) for line in seen]
        assert numbers == list(range(numbers[0], numbers[0] + 5))  # consecutive, none lost
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    # the manager noticed the client left and serves others as before
    assert Control(sock_path).request({"cmd": "status"})["ok"]


def test_followers_that_hang_up_leave_nothing_open_in_the_manager(server, sock_path):
    srv = server(conf(sock_path, """[{"name": "quiet", "target": "compapp:sleeper"}]"""))
    srv.wait_starts("quiet")
    manager = srv.wait_manager()

    def open_fds():
        return len(os.listdir(f"/proc/{manager}/fd"))

    assert Control(sock_path).request({"cmd": "status"})["ok"]
    baseline = open_fds()
    for _ in range(5):
        follower = Control(sock_path)
        follower.send(b'{"cmd": "tail", "name": "quiet", "follow": true}\n')
        assert follower.reply() == {"ok": True, "lines": []}
        follower.close()  # a quiet companion: only the hang-up can end the stream
    wait_until(lambda: open_fds() <= baseline, message="the followers' sockets to close")


def test_a_log_file_removed_before_rotation_does_not_crash_the_manager(server, sock_path,
                                                                        tmp_path):
    out = tmp_path / "gone.log"
    srv = server(conf(sock_path, f"""[
        {{"name": "t", "target": "compapp:talker", "stdout": {str(out)!r},
          "stdout_maxbytes": 200, "stdout_backups": 2}}]"""))
    srv.wait_starts("t")
    manager = srv.wait_manager()
    wait_until(lambda: os.path.exists(f"{out}.1"), message="a first rotation")
    os.unlink(out)
    os.unlink(f"{out}.1")
    wait_until(lambda: out.exists() and "talk" in out.read_text(), message="a fresh file")
    wait_until(lambda: os.path.exists(f"{out}.1"), message="rotation going on")
    assert srv.manager_pid() == manager and "crashed" not in srv.log()
