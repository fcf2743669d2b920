"""The control socket and the gunicorn-companion CLI against a real running Gunicorn."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
from support import Control, Server, alive, control_config, request_as, wait_until

CLI = [sys.executable, "-m", "gunicorn_companion"]


def config(sock, extra="", companions=None):
    companions = companions or """[
        {"name": "alpha", "target": "compapp:sleeper", "startsecs": 0},
        {"name": "ticker", "target": "compapp:crasher", "startsecs": 0, "restart_delay": 0.05},
    ]"""
    return control_config(sock, companions, extra)




@pytest.fixture
def ctl(server, sock_path):
    srv = server(config(sock_path))
    srv.wait_starts("alpha")
    srv.wait_log("Companion control socket listening at")
    conn = Control(sock_path)
    conn.server, conn.path = srv, sock_path
    yield conn
    conn.close()


def entry(reply, name):
    return next(c for c in reply["companions"] if c["name"] == name)


def time_passes(srv, restarts=2):
    """Let the manager's loop run through several timer expiries: the ticker
    companion crashes and is restarted every ~0.05 s."""
    seen = len(srv.starts("ticker"))
    srv.wait_starts("ticker", seen + restarts)


def run_cli(*args, sock=None, env=None):
    environ = dict(os.environ)
    environ.pop("GUNICORN_COMPANION_SOCKET", None)
    environ.update(env or {})
    argv = [*CLI] + (["-s", str(sock)] if sock else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=60)


def test_status_reports_every_companion(ctl):
    reply = ctl.request({"cmd": "status"})
    assert reply["ok"] is True
    assert reply["master_pid"] == ctl.server.pid
    assert reply["manager_pid"] == ctl.server.manager_pid()
    alpha = entry(reply, "alpha")
    assert alpha["state"] == "RUNNING" and alpha["pid"] == ctl.server.starts("alpha")[-1]
    assert alpha["uptime"] >= 0 and alpha["restarts"] == 0 and alpha["last_exit"] is None
    assert alpha["stdout"] == "inherit" and alpha["stderr"] == "inherit"
    ticker = wait_until(lambda: (lambda t: t if t["restarts"] >= 1 else None)(
        entry(ctl.request({"cmd": "status"}), "ticker")))
    assert ticker["last_exit"] == {"code": 3}


def test_stop_answers_once_stopped_and_the_companion_stays_stopped(ctl):
    srv = ctl.server
    alpha, = srv.starts("alpha")
    reply = ctl.request({"cmd": "stop", "name": "alpha"})
    assert reply == {"ok": True, "message": "alpha stopped (signal SIGTERM)"}
    assert not alive(alpha)
    # neither time nor an unchanged reread nor SIGHUP brings it back
    time_passes(srv)
    assert ctl.request({"cmd": "reread"})["ok"]
    srv.signal(signal.SIGHUP)
    srv.wait_log("Companion config reread: no changes", count=2)
    time_passes(srv)
    assert entry(ctl.request({"cmd": "status"}), "alpha")["state"] == "STOPPED"
    assert srv.starts("alpha") == [alpha]
    assert ctl.request({"cmd": "stop", "name": "alpha"}) == {
        "ok": True, "message": "alpha is already STOPPED"}
    # until it is started by hand
    reply = ctl.request({"cmd": "start", "name": "alpha"})
    new = srv.wait_starts("alpha", 2)[-1]
    assert reply == {"ok": True, "message": f"alpha started (pid {new})", "pid": new}
    assert entry(ctl.request({"cmd": "status"}), "alpha")["state"] == "RUNNING"


def test_status_answers_while_a_stop_is_pending(server, sock_path):
    srv = server(config(sock_path, companions="""[
        {"name": "stubborn", "target": "compapp:stubborn", "startsecs": 0, "stop_timeout": 2},
        {"name": "ticker", "target": "compapp:crasher", "startsecs": 0, "restart_delay": 0.05},
    ]"""))
    pid, = srv.wait_starts("stubborn")
    stopper, watcher = Control(sock_path), Control(sock_path)
    stopper.send(b'{"cmd": "stop", "name": "stubborn"}\n')
    wait_until(lambda: entry(watcher.request({"cmd": "status"}), "stubborn")["state"]
               == "STOPPING")
    time_passes(srv)  # supervision goes on meanwhile
    assert stopper.reply() == {"ok": True, "message": "stubborn stopped (signal SIGKILL)"}
    assert not alive(pid)


def test_pipelined_requests_are_answered_in_order(ctl):
    ctl.send(b'{"cmd": "stop", "name": "alpha"}\n{"cmd": "status"}\n'
             b'{"cmd": "start", "name": "alpha"}\n{"cmd": "nope"}\n')
    first, second, third, fourth = (ctl.reply() for _ in range(4))
    assert first["message"].startswith("alpha stopped")
    assert entry(second, "alpha")["state"] == "STOPPED"
    assert third["message"].startswith("alpha started")
    assert fourth["ok"] is False


def test_a_brief_status_has_only_the_fields_asked_for(ctl):
    full = ctl.request({"cmd": "status"})
    brief = ctl.request({"cmd": "status", "fields": ["name", "state"]})
    assert brief["ok"] is True and brief["manager_pid"] == full["manager_pid"]
    assert brief["companions"] == [{"name": c["name"], "state": c["state"]}
                                   for c in full["companions"]]
    # fields from the full snapshot: those that say nothing stay absent, as in the full reply
    some = ctl.request({"cmd": "status", "fields": ["uptime", "name", "group", "name"]})
    assert [sorted(c) for c in some["companions"]] == [["name", "uptime"], ["name", "uptime"]]


def test_every_field_of_a_full_status_can_be_asked_for(ctl):
    from gunicorn_companion.commands import STATUS_FIELDS

    for companion in ctl.request({"cmd": "status"})["companions"]:
        assert set(companion) <= set(STATUS_FIELDS), companion


BAD_LINES = [
    (b"not json", "not_json", "request is not valid JSON"),
    (b"[1, 2]", "not_an_object", "request must be a JSON object"),
    (b'{"name": "alpha"}', "missing_field", 'request has no "cmd" field'),
    (b'{"cmd": "stauts"}', "unknown_command", "unknown command 'stauts' (did you mean 'status'?)"),
    (b'{"cmd": "stop"}', "missing_field", "command 'stop' needs a \"name\" field"),
    (b'{"cmd": "stop", "name": 5}', "bad_field", '"name" must be a string'),
    (b'{"cmd": "stop", "name": "alhpa"}', "no_such_companion",
     "no companion named 'alhpa' (did you mean 'alpha'?)"),
    (b'{"cmd": "status", "x": "\xff\xfe"}', "not_utf8", "request is not valid UTF-8"),
    (b'{"cmd": "tail", "name": "alpha", "lines": -1}', "bad_field", '"lines" must be'),
    (b'{"cmd": "tail", "name": "alpha", "follow": 1}', "bad_field", '"follow" must be'),
    (b'{"cmd": "status", "fields": ["name", "sate"]}', "bad_field",
     "unknown status field 'sate' (did you mean 'state'?); known: name, state, pid"),
    (b'{"cmd": "status", "fields": "name"}', "bad_field",
     '"fields" must be a non-empty list of status fields like ["name", "state"], '
     "got a string ('name')"),
    (b'{"cmd": "status", "fields": []}', "bad_field", '"fields" must be a non-empty list'),
    (b'{"cmd": "status", "fields": null}', "bad_field", "got null"),
    (b'{"cmd": "status", "fields": ["name", 3]}', "bad_field",
     '"fields" must hold field names (strings), got a number (3)'),
]


@pytest.mark.parametrize("line,code,message", BAD_LINES, ids=[m for _, _, m in BAD_LINES])
def test_bad_input_gets_a_clear_error_and_the_connection_stays_usable(ctl, line, code, message):
    ctl.send(line + b"\n")
    reply = ctl.reply()
    assert reply["ok"] is False and message in reply["error"], reply
    assert reply["code"] == code
    assert ctl.request({"cmd": "status"})["ok"] is True
    assert alive(ctl.server.starts("alpha")[-1])


def test_an_overlong_line_is_refused_and_the_connection_closed(ctl):
    ctl.send(b"x" * (64 * 1024 + 10))
    reply = ctl.reply()
    assert reply == {"ok": False, "code": "line_too_long",
                     "error": "request line longer than 65536 bytes; closing the connection"}
    assert wait_until(ctl.closed_by_peer)
    assert Control(ctl.path).request({"cmd": "status"})["ok"]  # the manager is fine


def test_a_request_without_final_newline_is_answered_at_eof(ctl):
    ctl.send(b'{"cmd": "status"}')
    ctl.sock.shutdown(socket.SHUT_WR)  # what `echo ... | socat - UNIX-CONNECT:` does
    assert ctl.reply()["ok"] is True
    assert wait_until(ctl.closed_by_peer)


def test_idle_and_slow_clients_do_not_delay_supervision(ctl):
    path = ctl.path
    idle = [Control(path) for _ in range(40)]
    slow = [Control(path) for _ in range(10)]
    for conn in slow:
        conn.send(b'{"cmd": "sta')  # half a request, never finished
    alpha = ctl.server.starts("alpha")[-1]
    os.kill(alpha, signal.SIGKILL)
    ctl.server.wait_starts("alpha", 2, timeout=10)
    fresh = Control(path)
    assert entry(fresh.request({"cmd": "status"}), "alpha")["pid"] == \
        ctl.server.starts("alpha")[-1]
    for conn in idle + slow + [fresh]:
        conn.close()


def test_reread_applies_only_what_changed(ctl):
    srv = ctl.server
    alpha, = srv.starts("alpha")
    srv.write_config(config(ctl.path, companions="""[
        {"name": "alpha", "target": "compapp:sleeper", "startsecs": 0},
        {"name": "beta", "target": "compapp:sleeper", "startsecs": 0},
    ]"""))
    reply = ctl.request({"cmd": "reread"})
    assert reply["ok"] and reply["added"] == ["beta"] and reply["removed"] == ["ticker"]
    assert reply["changed"] == [] and reply["unchanged"] == ["alpha"]
    srv.wait_starts("beta")
    wait_until(lambda: not srv.running_as("ticker"))
    assert srv.starts("alpha") == [alpha] and alive(alpha)
    # a global default that alpha uses changed: alpha restarts
    srv.write_config(config(ctl.path, extra="companion_stop_timeout = 3", companions="""[
        {"name": "alpha", "target": "compapp:sleeper", "startsecs": 0},
        {"name": "beta", "target": "compapp:sleeper", "startsecs": 0, "stop_timeout": 10},
    ]"""))
    reply = ctl.request({"cmd": "reread"})
    assert reply["changed"] == ["alpha"] and reply["unchanged"] == ["beta"], reply
    srv.wait_starts("alpha", 2)
    assert [c["name"] for c in ctl.request({"cmd": "status"})["companions"]] == ["alpha", "beta"]


REREAD_FAILURES = [
    ("syntax error", "companion_workers = [", "SyntaxError"),
    ("unknown key", 'companion_workers = [{"name": "alpha", "target": "compapp:sleeper", '
                    '"stop_timout": 1}]', "unknown key 'stop_timout'"),
    ("bad target", 'companion_workers = [{"name": "alpha", "target": "compapp:nope"}]',
     "module 'compapp' has no attribute 'nope'"),
    ("duplicate name", 'companion_workers = [{"name": "x", "target": "compapp:sleeper"}, '
                       '{"name": "x", "target": "compapp:sleeper"}]', "duplicate name"),
]


@pytest.mark.parametrize("text,message", [f[1:] for f in REREAD_FAILURES],
                         ids=[f[0] for f in REREAD_FAILURES])
def test_reread_of_an_invalid_config_changes_nothing(ctl, text, message):
    srv = ctl.server
    before = ctl.request({"cmd": "status"})["companions"]
    srv.write_config(f"companion_control_socket = {str(ctl.path)!r}\n{text}\n")
    reply = ctl.request({"cmd": "reread"})
    assert reply["ok"] is False and message in reply["error"], reply
    assert reply["code"] == "invalid_config"
    time_passes(srv)
    after = ctl.request({"cmd": "status"})["companions"]
    assert [(c["name"], c["pid"] if c["name"] == "alpha" else None) for c in after] == \
        [(c["name"], c["pid"] if c["name"] == "alpha" else None) for c in before]


def test_socket_is_owner_only_by_default(ctl):
    mode = stat.S_IMODE(os.stat(ctl.path).st_mode)
    assert mode == 0o600


def test_socket_mode_setting(server, sock_path):
    srv = server(config(sock_path, extra="companion_control_socket_mode = 0o660"))
    srv.wait_log("Companion control socket listening at")
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660


def test_stale_socket_is_replaced(server, sock_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # bound, never listened, now closed: what a dead manager leaves
    srv = server(config(sock_path))
    srv.wait_log("Replacing stale control socket")
    srv.wait_starts("alpha")
    assert Control(sock_path).request({"cmd": "status"})["ok"]


def test_socket_is_replaced_after_the_manager_is_killed(server, sock_path):
    srv = server(config(sock_path))
    manager = srv.wait_manager()
    # Not mid-boot: a first manager that dies before it reports is a boot
    # failure, and Gunicorn exits (this test did, once, on Gunicorn 23)
    srv.wait_log(f"Companion manager booted (pid: {manager})")
    os.kill(manager, signal.SIGKILL)
    srv.wait_manager(other_than=manager)
    wait_until(lambda: _status_ok(sock_path), message=srv.log())


def _status_ok(path):
    try:
        return Control(path).request({"cmd": "status"})["ok"]
    except OSError:
        return False


def test_a_path_that_is_not_a_socket_is_refused_and_kept(tmp_path, sock_path):
    sock_path.write_text("precious")
    srv = Server(tmp_path, config(sock_path)).start()
    try:
        assert srv.wait_exit() == 1
        assert (f"control socket path {str(sock_path)!r} exists and is not a socket; "
                "refusing to replace it") in srv.log()
        assert sock_path.read_text() == "precious"
        assert srv.tree() == []
    finally:
        srv.cleanup()


def test_a_live_socket_of_another_process_is_refused_and_kept(tmp_path, sock_path):
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(sock_path))
    other.listen(1)
    srv = Server(tmp_path, config(sock_path)).start()
    try:
        assert srv.wait_exit() == 1
        assert "is in use by another running process" in srv.log()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        other.close()
        srv.cleanup()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_peers_of_another_uid_are_refused_whatever_the_mode(server, sock_path):
    srv = server(config(sock_path, extra="companion_control_socket_mode = 0o666"))
    srv.wait_log("Companion control socket listening at")
    os.chmod(sock_path.parent, 0o755)
    reply = request_as(sock_path, {"cmd": "stop", "name": "alpha"}, uid=65534, gid=65534)
    assert reply.get("ok") is False and "permission denied: uid 65534" in reply["error"], reply
    assert reply["code"] == "permission_denied"
    assert alive(srv.wait_starts("alpha")[-1])  # its start may still be on the way


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_the_group_may_control_when_the_mode_lets_it_in(server, sock_path):
    srv = server(config(sock_path, extra="companion_control_socket_mode = 0o660"))
    srv.wait_log("Companion control socket listening at")
    os.chmod(sock_path.parent, 0o755)
    reply = request_as(sock_path, {"cmd": "status"}, uid=65534, gid=os.getgid())
    assert reply.get("ok") is True, reply


def test_cli_status_table_and_json(ctl):
    path = ctl.path
    out = run_cli("status", sock=path)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST", "EXIT",
                              "MEMORY", "OUTPUT", "NOTE"]
    alpha = next(r for r in rows if r.startswith("alpha"))
    assert alpha.split()[1:3] == ["RUNNING", str(ctl.server.starts("alpha")[-1])]
    # columns line up
    assert len({line.index("STATE") if "STATE" in line else line.index(line.split()[1])
                for line in [header, *rows]}) == 1
    out = run_cli("--json", "status", env={"GUNICORN_COMPANION_SOCKET": str(path)})
    assert out.returncode == 0
    assert {c["name"] for c in json.loads(out.stdout)["companions"]} == {"alpha", "ticker"}


def test_cli_commands_and_exit_codes(ctl):
    path = ctl.path
    out = run_cli("stop", "alpha", sock=path)
    assert (out.returncode, out.stdout.strip()) == (0, "alpha stopped (signal SIGTERM)")
    out = run_cli("start", "alpha", sock=path)
    assert out.returncode == 0 and out.stdout.startswith("alpha started (pid ")
    out = run_cli("restart", "nope", sock=path)
    assert out.returncode == 1
    assert out.stderr.strip() == ("gunicorn-companion: no companion named 'nope'; "
                                  "known: alpha, ticker")
    out = run_cli("reread", sock=path)
    assert (out.returncode, out.stdout.strip()) == (0, "no changes")


def test_cli_reports_an_unreachable_socket_in_one_line(tmp_path):
    missing = tmp_path / "none.sock"
    out = run_cli("status", sock=missing)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and str(missing) in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("status")
    assert out.returncode == 2
    assert "no control socket: pass -s PATH or -c gunicorn.conf.py, set " \
           "GUNICORN_COMPANION_SOCKET" in out.stderr


@pytest.mark.parametrize("text,message", [f[1:] for f in REREAD_FAILURES],
                         ids=[f[0] for f in REREAD_FAILURES])
def test_reread_refuses_with_the_message_the_boot_prints(ctl, tmp_path, text, message):
    ctl.server.write_config(f"companion_control_socket = {str(ctl.path)!r}\n{text}\n")
    refused = ctl.request({"cmd": "reread"})["error"]
    (tmp_path / "boot").mkdir()
    boot = Server(tmp_path / "boot", f"preload_app = True\n{text}\n").start()
    try:
        assert boot.wait_exit() == 1
    finally:
        boot.cleanup()
    if "SyntaxError" in message:
        # Gunicorn reads the main config file first and prints its own
        # traceback; both name the fault and its line.
        assert "SyntaxError" in boot.log() and "(line 4)" in refused
    else:
        assert f"Error: {refused}" in boot.log()
