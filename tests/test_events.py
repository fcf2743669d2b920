"""The event stream: {"cmd": "events"} and `gunicorn-companion events`."""

import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import Control, control_config, status, wait_until

CLI = [sys.executable, "-m", "gunicorn_companion"]

TWO = """[
    {"name": "steady", "target": "compapp:sleeper", "startsecs": 0},
    {"name": "other", "target": "compapp:sleeper", "startsecs": 0}]"""


def all_running(sock_path) -> bool:
    return sock_path.exists() and all(c["state"] == "RUNNING"
                                      for c in status(sock_path).values())


def events_until(conn: Control, done, timeout=30.0) -> list[dict]:
    """Event lines from a subscription until ``done(events)`` holds."""
    events = []
    deadline = time.monotonic() + timeout
    while not done(events):
        assert time.monotonic() < deadline, f"timed out; events so far: {events}"
        reply = conn.reply()
        assert reply["ok"] is True and set(reply) == {"ok", "event"}, reply
        events.append(reply["event"])
    return events


def test_a_restart_streams_each_change_in_order_with_its_pids(server, sock_path):
    srv = server(control_config(sock_path, TWO))
    srv.until(lambda: all_running(sock_path), message="every companion RUNNING")
    old = status(sock_path)["steady"]["pid"]
    subscriber = Control(sock_path)
    first = subscriber.request({"cmd": "events"})
    assert first == {"ok": True, "companions": ["steady", "other"]}
    before = time.time()
    reply = Control(sock_path).request({"cmd": "restart", "name": "steady"})
    assert reply["ok"], reply
    events = events_until(subscriber, lambda e: e and e[-1]["state"] == "RUNNING")
    new = reply["pid"]
    assert [(e["companion"], e["previous"], e["state"], e["pid"]) for e in events] == [
        ("steady", "RUNNING", "STOPPING", old),
        ("steady", "STOPPING", "STARTING", new),
        ("steady", "STARTING", "RUNNING", new),
    ]
    # the exit that let it start again, with the pid that exited
    assert events[1]["exit"] == {"signal": "SIGTERM", "pid": old}
    assert "exit" not in events[0] and "exit" not in events[2]
    assert all(before - 1 <= e["time"] <= time.time() + 1 for e in events)


def test_names_filter_the_stream_and_unknown_ones_are_refused(server, sock_path):
    srv = server(control_config(sock_path, TWO))
    srv.until(lambda: all_running(sock_path), message="every companion RUNNING")
    subscriber = Control(sock_path)
    assert subscriber.request({"cmd": "events", "names": ["other"]}) == {
        "ok": True, "companions": ["other"]}
    for name in ("steady", "other"):  # only the second one's changes come
        assert Control(sock_path).request({"cmd": "restart", "name": name})["ok"]
    events = events_until(subscriber, lambda e: len(e) == 3)
    assert {e["companion"] for e in events} == {"other"}

    unknown = Control(sock_path).request({"cmd": "events", "names": ["stedy"]})
    assert unknown["ok"] is False and unknown["code"] == "no_such_companion"
    assert "did you mean 'steady'" in unknown["error"]
    for bad in ("steady", [1], [""]):
        reply = Control(sock_path).request({"cmd": "events", "names": bad})
        assert reply["ok"] is False and reply["code"] == "bad_field", reply
        assert '"names" must be a list of companion or group names' in reply["error"]


def test_the_cli_prints_one_flushed_line_per_change_and_exits_0_on_ctrl_c(server, sock_path):
    srv = server(control_config(sock_path, TWO))
    srv.until(lambda: all_running(sock_path), message="every companion RUNNING")
    human = Lines([*CLI, "-s", str(sock_path), "events", "steady"])
    as_json = Lines([*CLI, "-s", str(sock_path), "events", "--json"])
    try:
        # Nothing tells when a CLI has subscribed: restart until both have
        # printed a change, then read on to the end of that restart.
        wait_until(lambda: (Control(sock_path).request({"cmd": "restart", "name": "steady"})
                            and human.ready() and as_json.ready()),
                   message="both CLIs to print a change")
        human.skip_until("-> RUNNING")
        as_json.skip_until('"state": "RUNNING"')
        old = status(sock_path)["steady"]["pid"]
        new = Control(sock_path).request({"cmd": "restart", "name": "steady"})["pid"]
        lines = [human.next() for _ in range(3)]
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
        assert re.fullmatch(rf"{stamp} steady RUNNING -> STOPPING pid {old}", lines[0])
        assert re.fullmatch(rf"{stamp} steady STOPPING -> STARTING pid {new} "
                            rf"\(pid {old} ended: SIGTERM\)", lines[1])
        assert re.fullmatch(rf"{stamp} steady STARTING -> RUNNING pid {new}", lines[2])
        objects = [json.loads(as_json.next()) for _ in range(3)]
        assert [o["state"] for o in objects] == ["STOPPING", "STARTING", "RUNNING"]
        assert set(objects[1]) == {"time", "companion", "previous", "state", "pid", "exit"}
        assert objects[1]["exit"] == {"signal": "SIGTERM", "pid": old}
    finally:
        for lines in (human, as_json):
            lines.proc.send_signal(signal.SIGINT)
    for lines in (human, as_json):
        assert lines.proc.wait(10) == 0
        assert lines.proc.stderr.read() == ""


class Lines:
    """A command's stdout lines as they come, read with deadlines."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.pending: list[str] = []

    def _read(self):
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))

    def ready(self, timeout: float = 2.0) -> bool:
        """A line has come (it stays to be read)."""
        if not self.pending:
            try:
                self.pending.append(self.queue.get(timeout=timeout))
            except queue.Empty:
                return False
        return True

    def next(self, timeout: float = 30.0) -> str:
        if self.pending:
            return self.pending.pop(0)
        return self.queue.get(timeout=timeout)

    def skip_until(self, text: str) -> None:
        while text not in self.next():
            pass


def test_the_cli_says_when_there_is_no_manager(tmp_path):
    out = subprocess.run([*CLI, "-s", str(tmp_path / "none.sock"), "events"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "cannot connect to" in out.stderr and "No such file or directory" in out.stderr


def test_a_subscriber_that_never_reads_is_dropped_and_slows_nothing(server, sock_path):
    flappers = ", ".join(
        f'{{"name": "flap{i}", "target": "compapp:crasher", "startsecs": 0, '
        f'"restart_delay": 0, "max_restart_delay": 0}}' for i in range(8))
    srv = server(control_config(sock_path, f"[{flappers}]"), env={"CRASH_AFTER": "0"})
    srv.wait_starts("flap0", 3)
    manager = srv.wait_manager()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(str(sock_path))
    stalled.sendall(b'{"cmd": "events"}\n')  # and never reads again
    rss_before = _rss(manager)
    slowest = 0.0

    def dropped() -> bool:
        nonlocal slowest
        started = time.monotonic()
        status(sock_path)
        slowest = max(slowest, time.monotonic() - started)
        return hung_up(stalled)

    # the flappers fill its buffer; then the manager lets it go
    wait_until(dropped, timeout=120, message="the stalled subscriber to be dropped")
    assert slowest < 2.0, f"a status took {slowest:.2f}s while a subscriber stalled"
    assert _rss(manager) - rss_before < 8 * 2**20
    # what it was sent ends in whole lines, then the end of the stream
    stalled.setblocking(True)
    stalled.settimeout(10)
    data = b""
    while chunk := stalled.recv(65536):
        data += chunk
    stalled.close()
    # whole lines up to the moment it was dropped (the last may be cut short)
    lines = data.split(b"\n")[:-1]
    assert json.loads(lines[0]) == {"ok": True, "companions": [f"flap{i}" for i in range(8)]}
    assert all(json.loads(line)["event"]["companion"].startswith("flap") for line in lines[1:])
    assert len(lines) > 100


def hung_up(sock: socket.socket) -> bool:
    """The peer closed its end (whatever is still unread)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(mask & (select.POLLRDHUP | select.POLLHUP) for _, mask in poller.poll(0))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fatal_recipe() -> str:
    """The five-line alert of docs/observability.md."""
    text = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
    after = text.split("An alert on FATAL", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed (.ci/run installs it)")
def test_the_documented_fatal_alert_fires(server, sock_path, tmp_path):
    recipe = fatal_recipe()
    assert len(recipe.strip().splitlines()) == 5
    alerts = tmp_path / "alerts"
    recipe = recipe.replace('mail -s "companion FATAL on $(hostname)" ops@example.com',
                            f"cat >> {alerts}")
    assert str(alerts) in recipe
    srv = server(control_config(sock_path, """[
        {"name": "steady", "target": "compapp:sleeper", "startsecs": 0},
        {"name": "crashy", "target": "compapp:crasher", "autostart": False,
         "restart_delay": 0, "startretries": 0}]"""), env={"CRASH_AFTER": "0"})
    srv.until(lambda: sock_path.exists(), message="the control socket")
    env = dict(os.environ, GUNICORN_COMPANION_SOCKET=str(sock_path),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    alert = subprocess.Popen(["sh", "-c", recipe], env=env, start_new_session=True)
    try:
        # until the pipeline has subscribed, a FATAL goes unnoticed: try again
        wait_until(lambda: (Control(sock_path).request({"cmd": "start", "name": "crashy"})
                            and alerts.exists() and alerts.read_text()),
                   interval=0.2, message="an alert")
        event = json.loads(alerts.read_text().splitlines()[0])
        assert (event["companion"], event["state"], event["exit"]["code"]) == ("crashy",
                                                                              "FATAL", 3)
    finally:
        os.killpg(alert.pid, signal.SIGTERM)
        alert.wait(10)


@pytest.mark.parametrize("event, tail", [
    ({"companion": "beat", "previous": "RUNNING", "state": "STOPPING", "pid": 7},
     "beat RUNNING -> STOPPING pid 7"),
    ({"companion": "beat", "previous": "STARTING", "state": "BACKOFF", "pid": 7,
      "exit": {"code": 1, "pid": 7}}, "beat STARTING -> BACKOFF pid 7 exit 1"),
    ({"companion": "beat", "previous": "RUNNING", "state": "BACKOFF", "pid": 7,
      "exit": {"signal": "SIGKILL", "pid": 7}}, "beat RUNNING -> BACKOFF pid 7 SIGKILL"),
    ({"companion": "beat", "previous": "STOPPING", "state": "STARTING", "pid": 8,
      "exit": {"code": 0, "pid": 7}}, "beat STOPPING -> STARTING pid 8 (pid 7 ended: exit 0)"),
    ({"companion": "beat", "previous": "BACKOFF", "state": "STARTING", "pid": None},
     "beat BACKOFF -> STARTING"),
])
def test_format_event(event, tail):
    from gunicorn_companion.ctl import format_event

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(1796150351.96))
    assert format_event({"time": 1796150351.96, **event}) == f"{stamp} {tail}"
    assert format_event(event) == f"? {tail}"


def test_the_cli_reports_the_shutdown_then_says_the_stream_ended(server, sock_path):
    srv = server(control_config(sock_path, TWO))
    srv.until(lambda: all_running(sock_path), message="every companion RUNNING")
    watcher = Lines([*CLI, "-s", str(sock_path), "events", "--json", "steady"])
    # subscribed once a restart shows (nothing else tells)
    wait_until(lambda: (Control(sock_path).request({"cmd": "restart", "name": "steady"})
                        and watcher.ready()), message="the CLI to print a change")
    watcher.skip_until('"state": "RUNNING"')
    srv.signal(signal.SIGTERM)  # Gunicorn stops, and its manager with it
    last = [json.loads(watcher.next()) for _ in range(2)]
    assert [(e["previous"], e["state"]) for e in last] == [("RUNNING", "STOPPING"),
                                                           ("STOPPING", "STOPPED")]
    assert last[1]["exit"]["signal"] == "SIGTERM"
    assert watcher.proc.wait(30) == 0
    assert "the manager ended the event stream" in watcher.proc.stderr.read()
    assert srv.wait_exit() == 0
