"""How a companion is stopped: the stop signal goes to its main process only
(a pool owns its children), SIGKILL to its whole group at stop_timeout, and
whatever its group leaves behind gets SIGTERM, then SIGKILL after a grace;
plus what a STOPPING companion shows, and how a target that returns exits."""

import os
import signal
import subprocess
import sys

import pytest
from support import Control, alive, control_config, status, wait_until


def notes(srv, filename):
    path = srv.state / filename
    return path.read_text().splitlines() if path.exists() else []


def pool_children(srv, count=2, after=0):
    """The pids of the pool's children once ``count`` of them (after the first
    ``after`` lines of the pool's notes) say they are working."""
    working = srv.until(
        lambda: (lambda w: w if len(w) >= count else None)(
            [line.split()[0] for line in notes(srv, "p.pool")[after:] if "working" in line]),
        message=f"{count} pool children working")
    return working[:count]


def finished_and_killed(srv, kids):
    lines = notes(srv, "p.pool")
    finished = {k for k in kids if f"{k} finished its work" in lines}
    killed = {k for k in kids if any(line.startswith(f"{k} killed") for line in lines)}
    return finished, killed


@pytest.mark.parametrize("how", ["stop", "restart", "master SIGTERM"])
def test_a_pool_finishes_its_work_when_its_companion_is_stopped(server, sock_path, how):
    srv = server(control_config(sock_path, '[{"name": "p", "target": "compapp:pool"}]'))
    kids = pool_children(srv)
    if how == "master SIGTERM":
        srv.signal(signal.SIGTERM)
        assert srv.wait_exit() == 0
    else:
        reply = Control(sock_path).request({"cmd": how, "name": "p"})
        assert reply["ok"], reply
    finished, killed = finished_and_killed(srv, kids)
    # only the pool's parent heard the stop signal; it let its children finish
    assert killed == set() and finished == set(kids), notes(srv, "p.pool")
    assert "sending SIGKILL" not in srv.log()


def test_stop_as_group_signals_every_member_as_before(server, sock_path):
    srv = server(control_config(sock_path, """[
        {"name": "p", "target": "compapp:pool", "stop_as_group": True}]"""))
    kids = pool_children(srv)
    assert Control(sock_path).request({"cmd": "stop", "name": "p"})["ok"]
    srv.until(lambda: finished_and_killed(srv, kids)[1] == set(kids),
              message="every child to hear SIGTERM itself")


@pytest.mark.parametrize("ignores_term", [False, True])
def test_what_a_companion_leaves_behind_gets_sigterm_then_sigkill(server, sock_path,
                                                                  ignores_term):
    srv = server(control_config(sock_path, """[
        {"name": "a", "target": "compapp:abandoner", "startsecs": 0,
         "restart_delay": 60}]"""), env={"CHILD_IGNORES_TERM": "1" if ignores_term else ""})
    started = srv.until(lambda: [line.split()[0] for line in notes(srv, "a.child")
                                 if "started" in line], message="the left child")
    child = int(started[0])
    srv.until(lambda: f"{child} got SIGTERM" in notes(srv, "a.child"),
              message="SIGTERM for what the companion left behind")
    # the leftover grace is short (see docs/lifecycle.md): gone well within 10 s
    wait_until(lambda: not alive(child), 10, message="the left child to be gone")
    if ignores_term:
        srv.wait_log("did not exit")
    assert status(sock_path)["a"]["state"] == "BACKOFF"


def test_a_stopping_companion_explains_itself(server, sock_path):
    srv = server(control_config(sock_path, """[
        {"name": "s", "target": "compapp:stubborn", "stop_timeout": 120}]"""))
    srv.wait_starts("s")
    srv.until(lambda: status(sock_path)["s"]["state"] == "RUNNING", message="RUNNING")
    stopper = Control(sock_path)
    stopper.send(b'{"cmd": "stop", "name": "s"}\n')  # answered only once it has stopped
    entry = srv.until(lambda: (lambda e: e if e["state"] == "STOPPING" and
                               e.get("stopping", {}).get("seconds", 0) >= 0.2 else None)(
        status(sock_path)["s"]), message="STOPPING for a moment")
    assert entry["stopping"]["signal"] == "SIGTERM"
    assert entry["stopping"]["timeout"] == 120
    assert entry["stopping"]["group_left"] == 1
    table = subprocess.run(
        [sys.executable, "-m", "gunicorn_companion", "status", "--wide", "-s", str(sock_path)],
        capture_output=True, text=True, timeout=30)
    line = next(row for row in table.stdout.splitlines() if row.startswith("s "))
    assert "STOPPING" in line and "SIGTERM sent" in line and "1 process left" in line, table
    stopper.close()


def test_reload_timeout_defaults_to_the_companions_stop_timeout(server, sock_path):
    srv = server(control_config(sock_path, """[
        {"name": "long", "target": "compapp:sleeper", "stop_timeout": 1560},
        {"name": "own", "target": "compapp:sleeper", "stop_timeout": 30, "reload_timeout": 5},
        {"name": "plain", "target": "compapp:sleeper"}]"""))
    srv.wait_starts("plain")
    entries = status(sock_path)
    assert (entries["long"]["stop_timeout"], entries["long"]["reload_timeout"]) == (1560, 1560)
    assert (entries["own"]["stop_timeout"], entries["own"]["reload_timeout"]) == (30, 5)
    assert (entries["plain"]["stop_timeout"], entries["plain"]["reload_timeout"]) == (10, 10)


def test_a_target_that_returns_runs_its_own_exit_handlers_only(server, sock_path):
    srv = server(control_config(sock_path, """[
        {"name": "r", "target": "compapp:returns_after_cleanup", "startsecs": 0,
         "restart_delay": 60}]"""), env={"COMPAPP_MASTER_ATEXIT": "1"})
    first = srv.wait_starts("r")[0]
    srv.until(lambda: str(first) in notes(srv, "r.atexit"),
              message="the handler the companion registered to run")
    srv.until(lambda: status(sock_path)["r"]["state"] == "BACKOFF", message="BACKOFF")
    assert status(sock_path)["r"]["last_exit"] == {"code": 0}
    # the master's handler (registered before the fork) is not the companion's
    assert str(first) not in notes(srv, "master-atexit")


def test_a_target_that_returns_joins_its_multiprocessing_children(server, sock_path):
    srv = server(control_config(sock_path, """[
        {"name": "mp", "target": "compapp:starts_process_and_returns", "startsecs": 0,
         "restart_delay": 60}]"""))
    srv.wait_starts("mp")
    srv.until(lambda: any(line.endswith(" done") for line in notes(srv, "mp.mpchild")),
              message="the multiprocessing child to finish")
    srv.until(lambda: status(sock_path)["mp"]["state"] == "BACKOFF", message="BACKOFF")
    assert status(sock_path)["mp"]["last_exit"] == {"code": 0}


def test_print_config_shows_each_companions_effective_timeouts(tmp_path):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(
        "companion_workers = [{'name': 'long', 'target': 'compapp:sleeper', "
        "'stop_timeout': 1560}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn_companion", "serve", "-c", str(config),
         "--print-config", "compapp:app"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), "apps")))
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.lstrip().startswith("long"))
    assert "reload_timeout = 1560" in line and "stop_as_group = False" in line, line


def test_a_target_that_execs_keeps_its_notify_channel_and_singleton_lock(server, sock_path):
    srv = server(control_config(sock_path, """[
        {"name": "x", "target": "compapp:hands_off_to_a_program", "wait_ready": True,
         "singleton": True}]"""))
    pid = srv.wait_starts("x")[0]
    # ready() from the program it became: the channel survived the exec
    srv.until(lambda: status(sock_path)["x"]["state"] == "RUNNING", message="RUNNING")
    held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert any(path.endswith("-x.lock") for path in held), held
