"""`gunicorn-companion top`: the pure table, and the program in tmux as a
person sees it."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import Control, control_config, status, wait_until

from gunicorn_companion import top

MiB = 2**20


def test_cpu_percent_is_the_cpu_time_between_two_refreshes_over_their_interval():
    first, sample = top.table_rows([{"name": "a", "pid": 5, "cpu_seconds": 1.0}], {}, 10.0)
    assert first[0]["cpu"] is None  # nothing to compare with yet
    rows, _ = top.table_rows([{"name": "a", "pid": 5, "cpu_seconds": 1.5},
                              {"name": "b", "pid": None}], sample, 11.0)
    assert [row["cpu"] for row in rows] == [50.0, None]
    # a new process (a restart) starts its own count
    rows, _ = top.table_rows([{"name": "a", "pid": 6, "cpu_seconds": 0.1}], sample, 11.0)
    assert rows[0]["cpu"] is None


def test_cpu_percent_divides_by_the_time_between_the_managers_readings():
    # the manager reads /proc within a budget: a figure it did not refresh
    # keeps its old sampled_at, and is not a rate of 0 over this refresh
    _, sample = top.table_rows([{"name": "a", "pid": 5, "cpu_seconds": 1.0, "sampled_at": 100.0},
                                {"name": "b", "pid": 7, "cpu_seconds": 2.0}], {}, 10.0)
    rows, sample = top.table_rows([{"name": "a", "pid": 5, "cpu_seconds": 1.0, "sampled_at": 100.0},
                                   {"name": "b", "pid": 7, "cpu_seconds": 2.5}], sample, 11.0)
    assert [row["cpu"] for row in rows] == [None, 50.0]  # a: not read again yet
    rows, _ = top.table_rows([{"name": "a", "pid": 5, "cpu_seconds": 2.0, "sampled_at": 104.0}],
                             sample, 12.0)
    assert rows[0]["cpu"] == 25.0  # one second of CPU over the four between readings


ROWS = [
    {"name": "zeta", "state": "RUNNING", "pid": 30, "uptime": 50, "restarts": 0, "cpu": 1.0,
     "rss": 30 * MiB},
    {"name": "alpha", "state": "FATAL", "pid": None, "uptime": None, "restarts": 4,
     "cpu": None, "rss": None},
    {"name": "mid", "state": "BACKOFF", "pid": None, "uptime": None, "restarts": 2,
     "cpu": None, "rss": None},
    {"name": "beta", "state": "RUNNING", "pid": 20, "uptime": 10, "restarts": 1, "cpu": 9.5,
     "rss": 10 * MiB},
]


@pytest.mark.parametrize("key, reverse, order", [
    ("name", False, ["alpha", "beta", "mid", "zeta"]),
    ("name", True, ["zeta", "mid", "beta", "alpha"]),
    ("state", False, ["alpha", "mid", "zeta", "beta"]),  # problems first
    ("pid", False, ["beta", "zeta", "alpha", "mid"]),  # without one: last, in their order
    ("cpu", True, ["beta", "zeta", "alpha", "mid"]),
    ("restarts", True, ["alpha", "mid", "beta", "zeta"]),
    ("rss", True, ["zeta", "beta", "alpha", "mid"]),
])
def test_sort_rows(key, reverse, order):
    assert [row["name"] for row in top.sort_rows(ROWS, key, reverse)] == order


@pytest.mark.parametrize("letter, before, after", [
    ("c", ("name", False), ("cpu", True)),  # figures: biggest first
    ("c", ("cpu", True), ("cpu", False)),  # again: reversed
    ("n", ("cpu", True), ("name", False)),
    ("n", ("name", False), ("name", True)),
])
def test_choose_sort(letter, before, after):
    assert top.choose_sort(letter, *before) == after


@pytest.mark.parametrize("width", [120, 80, 60, 40, 20, 5, 1])
def test_render_never_makes_a_line_longer_than_the_terminal(width):
    rows = ROWS + [{"name": "a-rather-long-companion-name:12", "state": "STOPPING",
                    "pid": 99999, "uptime": 86400 * 3, "restarts": 12345, "cpu": 123.4,
                    "rss": 3 * 2**30, "pss": 2 * 2**30, "uss": 2**30,
                    "last_exit": {"signal": "SIGKILL"}}]
    lines = top.render(rows, width, 30, top.title_line(rows, "name", False, "18:00:00"))
    assert all(len(line) <= width for line in lines)
    assert len(lines) == len(rows) + 3
    if width >= 60:  # every row on its own line, name first, through the CPU column
        assert lines[1].split()[:6] == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%"]
        names = [line.split()[0] for line in lines[2:-1]]
        assert names[:4] == ["zeta", "alpha", "mid", "beta"]
        # a long name shortened in the middle keeps its instance number
        assert names[4].startswith("a-") and names[4].endswith("me:12")


def test_render_says_how_many_rows_did_not_fit():
    lines = top.render(ROWS, 200, 5, "title")
    assert lines == [lines[0], lines[1], lines[2], lines[3],
                     f"(2 more below)  {top.FOOTER}"]
    assert len(top.render(ROWS, 100, 1, "title")) == 1


# -- in tmux, as a person sees it -----------------------------------------------------

TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run "
                                                     "installs it)")
COMPANIONS = """[
    {"name": "zeta", "target": "compapp:sleeper", "startsecs": 0},
    {"name": "alpha", "target": "compapp:sleeper", "startsecs": 0},
    {"name": "mid", "target": "compapp:sleeper", "startsecs": 0}]"""
NAMES = {"zeta", "alpha", "mid"}


class Pane:
    """A shell in a detached tmux session of a fixed size, on a tmux server
    of its own (the test's, not anyone else's)."""

    def __init__(self, root: Path, width: int, height: int):
        self.socket = str(root / "tmux.sock")
        env = dict(os.environ, ENV="",
                   PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        env.pop("TMUX", None)
        self.env = env
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                  "sh")

    def tmux(self, *args) -> str:
        return subprocess.run([TMUX, "-S", self.socket, *args], capture_output=True, text=True,
                              env=self.env, timeout=30, check=True).stdout

    def type(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "top").splitlines()

    def command(self) -> str:
        return self.tmux("display-message", "-p", "-t", "top", "#{pane_current_command}").strip()

    def rows(self) -> list[list[str]]:
        """The table's rows on screen: the cells of each line that starts
        with a companion's name."""
        return [line.split() for line in self.screen() if line.split()[:1]
                and line.split()[0] in NAMES]

    def until(self, predicate, message: str):
        try:
            return wait_until(predicate, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- screen ---\n" + "\n".join(self.screen())) from None

    def close(self) -> None:
        subprocess.run([TMUX, "-S", self.socket, "kill-server"], capture_output=True,
                       env=self.env, timeout=30)


@pytest.fixture
def pane(tmp_path):
    panes = []

    def make(width: int, height: int) -> Pane:
        panes.append(Pane(tmp_path, width, height))
        return panes[-1]

    yield make
    for made in panes:
        made.close()


def top_in_tmux(server, sock_path, pane, width: int, height: int):
    """A server with COMPANIONS all RUNNING, and top typed into a shell."""
    srv = server(control_config(sock_path, COMPANIONS))
    srv.until(lambda: sock_path.exists() and all(
        c["state"] == "RUNNING" for c in status(sock_path).values()),
        message="every companion RUNNING")
    screen = pane(width, height)
    screen.type(f"gunicorn-companion -s {sock_path} top; echo top exited $?", "Enter")
    return srv, screen


@needs_tmux
def test_top_in_tmux_shows_updates_sorts_and_quits(server, sock_path, pane):
    _, screen = top_in_tmux(server, sock_path, pane, 120, 30)
    # by name at first, every companion with its state and pid
    pids = {name: str(c["pid"]) for name, c in status(sock_path).items()}
    screen.until(lambda: [row[:3] for row in screen.rows()] == [
        ["alpha", "RUNNING", pids["alpha"]], ["mid", "RUNNING", pids["mid"]],
        ["zeta", "RUNNING", pids["zeta"]]], "the table sorted by name")
    header = screen.screen()
    assert header[0].startswith("gunicorn-companion top ") and "sorted by name" in header[0]
    assert header[1].split()[:6] == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%"]
    assert any(line.startswith("sort: n name") for line in header)
    # memory figures: the RSS of a running Python is megabytes
    assert all(row[6].endswith("M") for row in screen.rows())
    # a restart shows on screen within a refresh or two
    new = Control(sock_path).request({"cmd": "restart", "name": "alpha"})["pid"]
    screen.until(lambda: ["alpha", "RUNNING", str(new)] in [r[:3] for r in screen.rows()],
                 "alpha's new pid on screen")
    # u: by uptime, the longest first: the restarted one comes last
    screen.type("u")
    screen.until(lambda: [row[0] for row in screen.rows()] == ["zeta", "mid", "alpha"]
                 and "sorted by uptime" in screen.screen()[0], "the order by uptime")
    screen.type("q")
    screen.until(lambda: any(line == "top exited 0" for line in screen.screen()),
                 "top to exit")
    screen.until(lambda: screen.command() == "sh", "the shell to have the terminal again")
    # the terminal is as it was: the table gone, the command, its exit, a prompt
    lines = [line for line in screen.screen() if line.strip()]
    assert lines[-2:] == ["top exited 0", lines[-1]] and lines[-1].rstrip() in ("$", "#")
    assert lines[-3].endswith("top; echo top exited $?") and not screen.rows()


@needs_tmux
def test_top_in_a_narrow_terminal_cuts_lines_and_survives_a_resize(server, sock_path, pane):
    _, screen = top_in_tmux(server, sock_path, pane, 60, 12)
    screen.until(lambda: len(screen.rows()) == 3, "the table")

    def tidy() -> bool:
        """Every line starts as one of the table's lines starts: nothing wrapped."""
        lines = [line for line in screen.screen() if line.strip()]
        starts = ("gunicorn-companion top", "NAME", "sort:", *NAMES)
        return (len(screen.rows()) == 3
                and all(line.startswith(starts) for line in lines)
                and all(len(line) <= int(screen.tmux("display-message", "-p", "-t", "top",
                                                     "#{pane_width}")) for line in lines))

    screen.until(tidy, "a tidy table at 60 columns")
    for width in (30, 100, 45):
        screen.tmux("resize-window", "-t", "top", "-x", str(width), "-y", "12")
        screen.until(lambda w=width: tidy() and all(len(line) <= w
                                                    for line in screen.screen()),
                     f"a tidy table at {width} columns")
    screen.type("C-c")  # Ctrl-C quits too, restoring the terminal
    screen.until(lambda: any(line == "top exited 0" for line in screen.screen()),
                 "top to exit on Ctrl-C")


def test_top_needs_a_terminal(sock_path):
    out = subprocess.run([sys.executable, "-m", "gunicorn_companion", "-s", str(sock_path),
                          "top"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "top needs a terminal" in out.stderr


def test_status_reads_cpu_and_memory_only_when_asked(server, sock_path):
    srv = server(control_config(sock_path, """[
        {"name": "hog", "target": "compapp:grower", "startsecs": 0},
        {"name": "idle", "target": "compapp:sleeper", "autostart": False}]"""),
        env={"GROW_MB": "32"})
    srv.until(lambda: sock_path.exists() and status(sock_path)["hog"]["state"] == "RUNNING",
              message="hog RUNNING")
    assert not set(top.STATUS_FIELDS[-4:]) & set(status(sock_path)["hog"])
    asked = ["name", "pid", "cpu_seconds", "rss", "pss", "uss"]

    def hog():
        reply = Control(sock_path).request({"cmd": "status", "fields": asked})
        assert reply["ok"], reply
        return reply["companions"]

    # once it has written its 32 MiB, they are its own: unshared, and counted whole
    srv.until(lambda: hog()[0].get("uss", 0) > 32 * MiB, message="hog's memory")
    entry, idle = hog()
    assert entry["rss"] >= entry["pss"] >= entry["uss"] > 32 * MiB
    assert isinstance(entry["cpu_seconds"], float) and entry["cpu_seconds"] >= 0
    # when the figures were read, on the manager's clock, for top's rate
    later = hog()[0]
    assert later["sampled_at"] > entry["sampled_at"]
    assert idle == {"name": "idle", "pid": None}  # no process: no figures


@needs_tmux
def test_top_says_so_when_the_manager_goes_away(server, sock_path, pane):
    srv, screen = top_in_tmux(server, sock_path, pane, 100, 12)
    screen.until(lambda: len(screen.rows()) == 3, "the table")
    srv.signal(signal.SIGTERM)
    screen.until(lambda: any(line == "top exited 2" for line in screen.screen()),
                 "top to exit")
    text = "\n".join(screen.screen())
    # closed while top sent its request, or while it waited for the reply
    assert f"gunicorn-companion: connection to {sock_path} closed" in text.replace("\n", "")
