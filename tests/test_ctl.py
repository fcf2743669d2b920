"""Tests for the control CLI: pure formatters, then main() against a real UNIX socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from gunicorn_companion import client, ctl
from gunicorn_companion.ctl import format_duration, format_exit, format_status, main

SRC = Path(__file__).resolve().parents[1] / "src"

# -- format_duration / format_exit -------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "-"),
        (0, "0s"),
        (0.4, "0s"),
        (5, "5s"),
        (5.99, "5s"),
        (59.999, "59s"),
        (60, "1m00s"),
        (65, "1m05s"),
        (192, "3m12s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (2 * 3600 + 5 * 60 + 59, "2h05m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (3 * 86400 + 4 * 3600 + 59 * 60, "3d04h"),
        (400 * 86400, "400d00h"),
        (-0.01, "0s"),
        (float("nan"), "-"),
        (float("inf"), "-"),
        (True, "-"),
        ("5", "-"),
    ],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("last_exit", "expected"),
    [
        (None, "-"),
        ({"code": 0}, "exit 0"),
        ({"code": 1}, "exit 1"),
        ({"code": 255}, "exit 255"),
        ({"signal": "SIGKILL"}, "SIGKILL"),
        ({"signal": "signal 77"}, "signal 77"),
        ({"signal": 9}, "signal 9"),
        ({"code": None, "signal": "SIGTERM"}, "SIGTERM"),
        ({"code": 3, "signal": None}, "exit 3"),
        ({}, "-"),
    ],
)
def test_format_exit(last_exit, expected):
    assert format_exit(last_exit) == expected


def test_format_status_aligns_columns():
    reply = {
        "ok": True,
        "companions": [
            {
                "name": "scheduler",
                "state": "RUNNING",
                "pid": 4242,
                "uptime": 192.5,
                "restarts": 0,
                "last_exit": None,
                "target": "app.tasks:run",  # fields the table does not show are ignored
            },
            {
                "name": "q",
                "state": "BACKOFF",
                "pid": None,
                "uptime": None,
                "restarts": 12,
                "last_exit": {"code": 1},
            },
            {
                "name": "socketio",
                "state": "STOPPED",
                "pid": None,
                "uptime": None,
                "restarts": 3,
                "last_exit": {"signal": "SIGKILL"},
            },
            {
                "name": "beat",
                "state": "STARTING",
                "pid": 77,
                "uptime": 2,
                "restarts": 0,
                "last_exit": None,
                "memory": 5 * 2**20 + 2**19,
                "waiting": "singleton lock",
            },
            {
                "name": "rq:0",
                "state": "RUNNING",
                "pid": 78,
                "uptime": 2,
                "restarts": 1,
                "last_exit": {"signal": "SIGTERM"},
                "memory": 812 * 2**10,
                "last_recycle": "max_lifetime reached",
            },
        ],
    }
    assert format_status(reply) == (
        "NAME       STATE     PID   UPTIME  RESTARTS  LAST EXIT  MEMORY  OUTPUT  NOTE\n"
        "scheduler  RUNNING   4242  3m12s   0         -          -       -\n"
        "q          BACKOFF   -     -       12        exit 1     -       -\n"
        "socketio   STOPPED   -     -       3         SIGKILL    -       -\n"
        "beat       STARTING  77    2s      0         -          5.5M    -       "
        "waiting for singleton lock\n"
        "rq:0       RUNNING   78    2s      1         SIGTERM    812K    -       "
        "last restart: max_lifetime reached"
    )


@pytest.mark.parametrize(
    "reply",
    [
        {"ok": True, "companions": []},
        {"ok": True},
        {"ok": True, "companions": None},
        {"ok": True, "companions": ["junk", 3]},
    ],
)
def test_format_status_without_companions_is_the_header(reply):
    assert format_status(reply) == (
        "NAME  STATE  PID  UPTIME  RESTARTS  LAST EXIT  MEMORY  OUTPUT  NOTE")


@pytest.mark.parametrize(
    "companion, expected",
    [
        ({"output_dropped": 12}, "12 output lines dropped"),
        ({"output_dropped": 1}, "1 output line dropped"),
        ({"output_dropped": 0}, ""),
        ({"output_dropped": True}, ""),
        ({"output_dropped": "many"}, ""),
        ({}, ""),
    ],
)
def test_format_dropped(companion, expected):
    assert ctl.format_dropped(companion) == expected


def test_format_status_adds_dropped_output_lines_to_the_note():
    reply = {"ok": True, "companions": [
        {"name": "a", "output_dropped": 3, "waiting": "ready()"},
        {"name": "b", "output_dropped": 1}]}
    rows = format_status(reply).splitlines()[1:]
    assert rows[0].endswith("  waiting for ready(); 3 output lines dropped")
    assert rows[1].endswith("  1 output line dropped")


def test_format_status_tolerates_missing_fields():
    reply = {"ok": True, "companions": [{"name": "a-very-long-name"}]}
    assert format_status(reply) == (
        "NAME              STATE  PID  UPTIME  RESTARTS  LAST EXIT  MEMORY  OUTPUT  NOTE\n"
        "a-very-long-name  ?      -    -       -         -          -       -"
    )


# -- a tiny real manager stand-in ---------------------------------------------------

HANG = object()  # respond() result: read the request, then never answer


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        server: CannedServer = self.server  # type: ignore[assignment]
        line = self.rfile.readline()
        request = json.loads(line) if line.strip() else None
        server.requests.append(request)
        answer = server.respond(request)
        if answer is HANG:
            # Held until teardown; the deadline only stops a broken test hanging CI.
            server.release.wait(timeout=30)
            return
        for piece in answer or ():
            self.wfile.write(piece)
            self.wfile.flush()


class CannedServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers each connection with ``respond(request)``: an iterable of byte pieces."""

    daemon_threads = True

    def __init__(self, path: str, respond):
        self.respond = respond
        self.requests: list = []
        self.release = threading.Event()
        super().__init__(path, _Handler)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self):
        self.release.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


def _reply(obj) -> list[bytes]:
    return [json.dumps(obj).encode() + b"\n"]


@pytest.fixture
def sock_dir(tmp_path):
    # AF_UNIX paths are limited to 107 bytes and pytest's tmp_path can be long.
    if len(str(tmp_path / "ctl.sock")) < 100:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="gc-", dir="/tmp"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def serve(sock_dir, monkeypatch):
    """serve(respond) starts a CannedServer and returns it; stopped at teardown."""
    monkeypatch.delenv(ctl.SOCKET_ENV, raising=False)
    servers = []

    def start(respond, name="ctl.sock"):
        server = CannedServer(str(sock_dir / name), respond)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


STATUS_REPLY = {
    "ok": True,
    "companions": [
        {
            "name": "scheduler",
            "state": "RUNNING",
            "pid": 101,
            "uptime": 7500,
            "restarts": 1,
            "last_exit": {"signal": "SIGKILL"},
        }
    ],
}


def _manager(request):
    """A plausible manager: status, start/stop/restart of 'scheduler', reread."""
    cmd = request["cmd"]
    if cmd == "status":
        return _reply(STATUS_REPLY)
    if cmd == "reread":
        return _reply({"ok": True})
    if request.get("name") != "scheduler":
        return _reply({"ok": False, "error": f"no companion named {request.get('name')!r}"})
    return _reply({"ok": True, "message": f"scheduler: {cmd} done"})


# -- main(): success and refusal ------------------------------------------------------


def test_status_prints_the_table(serve, capsys):
    server = serve(_manager)
    assert main(["-s", server.server_address, "status"]) == 0
    out, err = capsys.readouterr()
    assert out == (
        "NAME       STATE    PID  UPTIME  RESTARTS  LAST EXIT  MEMORY  OUTPUT  NOTE\n"
        "scheduler  RUNNING  101  2h05m   1         SIGKILL    -       -\n"
    )
    assert err == ""
    assert server.requests == [{"cmd": "status"}]


@pytest.mark.parametrize("argv", [
    ["status", "--brief"],
    ["--brief", "status"],
    ["status", "--brief", "--timeout", "5"],  # through argparse
])
def test_brief_status_asks_for_names_and_states_and_prints_them(serve, capsys, argv):
    server = serve(_manager)
    assert main(["-s", server.server_address, *argv]) == 0
    assert capsys.readouterr() == ("NAME       STATE\nscheduler  RUNNING\n", "")
    assert server.requests == [{"cmd": "status", "fields": ["name", "state"]}]


def test_brief_is_only_for_status(serve, capsys):
    server = serve(_manager)
    assert main(["-s", server.server_address, "start", "--brief", "scheduler"]) == 2
    assert "--brief" in capsys.readouterr().err
    assert server.requests == []


@pytest.mark.parametrize("cmd", ["start", "stop", "restart"])
def test_named_commands_send_the_name_and_print_the_message(serve, capsys, cmd):
    server = serve(_manager)
    assert main(["-s", server.server_address, cmd, "scheduler"]) == 0
    assert capsys.readouterr() == (f"scheduler: {cmd} done\n", "")
    assert server.requests == [{"cmd": cmd, "name": "scheduler"}]


def test_reply_without_message_prints_nothing(serve, capsys):
    server = serve(_manager)
    assert main(["-s", server.server_address, "reread"]) == 0
    assert capsys.readouterr() == ("", "")
    assert server.requests == [{"cmd": "reread"}]


def test_refusal_exits_1_with_the_error_on_stderr(serve, capsys):
    server = serve(_manager)
    assert main(["-s", server.server_address, "stop", "nope"]) == 1
    assert capsys.readouterr() == ("", "gunicorn-companion: no companion named 'nope'\n")


def test_refusal_without_an_error_field_still_says_something(serve, capsys):
    server = serve(lambda request: _reply({"ok": False}))
    assert main(["-s", server.server_address, "status"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "gunicorn-companion: the manager refused the request without a reason\n"


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--json", "status"], 0),
        (["status", "--json"], 0),
        (["--json", "start", "scheduler"], 0),
        (["stop", "nope", "--json"], 1),
        (["--json", "reread"], 0),
    ],
)
def test_json_prints_the_raw_reply(serve, capsys, argv, code):
    server = serve(_manager)
    assert main(["-s", server.server_address, *argv]) == code
    out, err = capsys.readouterr()
    assert json.loads(out) == _expected_reply(server.requests[0])
    assert out == json.dumps(json.loads(out), indent=2, sort_keys=True) + "\n"
    if code == 1:
        assert err == "gunicorn-companion: no companion named 'nope'\n"
    else:
        assert err == ""


def _expected_reply(request):
    return json.loads(b"".join(_manager(request)))


def test_reply_split_across_reads_and_extra_lines_are_handled(serve, capsys):
    pieces = [b'\n{"ok": tr', b'ue, "message": "fine"}\r\n', b'{"ok": false}\n']
    server = serve(lambda request: pieces)
    assert main(["-s", server.server_address, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "message": "fine"}


# -- main(): where the socket comes from, and option placement ---------------------------


def test_socket_from_the_environment(serve, capsys, monkeypatch):
    server = serve(_manager)
    monkeypatch.setenv(ctl.SOCKET_ENV, server.server_address)
    assert main(["start", "scheduler"]) == 0
    assert capsys.readouterr().out == "scheduler: start done\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["-s", "{sock}", "start", "scheduler"],
        ["--socket", "{sock}", "start", "scheduler"],
        ["--socket={sock}", "start", "scheduler"],
        ["start", "scheduler", "-s", "{sock}"],
        ["start", "-s", "{sock}", "scheduler"],
        ["start", "scheduler", "--socket", "{sock}"],
    ],
)
def test_dash_s_overrides_the_environment_before_or_after_the_command(
    serve, sock_dir, capsys, monkeypatch, argv
):
    server = serve(_manager)
    monkeypatch.setenv(ctl.SOCKET_ENV, str(sock_dir / "elsewhere.sock"))
    argv = [arg.replace("{sock}", server.server_address) for arg in argv]
    assert main(argv) == 0
    assert capsys.readouterr() == ("scheduler: start done\n", "")


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--timeout", "5", "-s", "{sock}", "status"],
        ["status", "--json", "--timeout", "5", "-s", "{sock}"],
        ["--json", "status", "--timeout=5", "-s", "{sock}"],
        ["-s", "{sock}", "status", "--json"],
    ],
)
def test_options_before_and_after_the_command(serve, capsys, argv):
    server = serve(_manager)
    argv = [arg.replace("{sock}", server.server_address) for arg in argv]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == STATUS_REPLY


def test_options_after_the_command_do_not_reset_those_before(serve, capsys):
    server = serve(_manager)
    # If the subcommand's copy of --json defaulted to False it would undo this.
    assert main(["--json", "-s", server.server_address, "status"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS_REPLY


def test_no_socket_given(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(ctl.SOCKET_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no gunicorn.conf.py here
    assert main(["status"]) == 2
    assert capsys.readouterr() == (
        "",
        "gunicorn-companion: no control socket: pass -s PATH or -c gunicorn.conf.py, set "
        "GUNICORN_COMPANION_SOCKET, or run this where gunicorn.conf.py is\n",
    )


def test_empty_socket_env_counts_as_not_given(capsys, monkeypatch):
    monkeypatch.setenv(ctl.SOCKET_ENV, "")
    assert main(["status"]) == 2
    assert "no control socket" in capsys.readouterr().err


# -- main(): unreachable or misbehaving managers ------------------------------------------


def _one_line_error(capsys, path):
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gunicorn-companion: ")
    assert err.endswith("\n") and err.count("\n") == 1
    assert path in err
    assert "Traceback" not in err
    return err


def test_missing_socket_exits_2_naming_the_path(sock_dir, capsys, monkeypatch):
    monkeypatch.delenv(ctl.SOCKET_ENV, raising=False)
    path = str(sock_dir / "missing.sock")
    assert main(["-s", path, "status"]) == 2
    err = _one_line_error(capsys, path)
    assert err == (
        f"gunicorn-companion: cannot connect to {path}: No such file or directory "
        "(is Gunicorn running with companion_control_socket set?)\n"
    )


def test_socket_nobody_listens_on(sock_dir, capsys):
    path = str(sock_dir / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound but never listening: what a crashed manager leaves behind
    try:
        assert main(["-s", path, "status"]) == 2
    finally:
        stale.close()
    err = _one_line_error(capsys, path)
    assert f"cannot connect to {path}: Connection refused" in err


def test_path_that_is_not_a_socket(sock_dir, capsys):
    path = str(sock_dir / "plain-file")
    Path(path).write_text("")
    assert main(["-s", path, "status"]) == 2
    err = _one_line_error(capsys, path)
    assert f"cannot connect to {path}: " in err


def test_path_too_long_for_af_unix(capsys):
    path = "/tmp/" + "x" * 200
    assert main(["-s", path, "status"]) == 2
    assert f"cannot connect to {path}: " in _one_line_error(capsys, path)


def test_permission_denied(capsys, monkeypatch):
    class DeniedSocket:
        def __init__(self, *args):
            pass

        def settimeout(self, timeout):
            pass

        def connect(self, path):
            raise PermissionError(13, "Permission denied")

        def close(self):
            pass

    # Root ignores socket permissions, so fake the OS answer rather than chmod.
    monkeypatch.setattr(client.socket, "socket", DeniedSocket)
    path = "/run/x.sock"
    assert main(["-s", path, "status"]) == 2
    err = _one_line_error(capsys, path)
    assert err.startswith(f"gunicorn-companion: permission denied on {path}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses socket file permissions")
def test_permission_denied_for_real(serve, capsys):
    server = serve(_manager)
    os.chmod(server.server_address, 0)
    assert main(["-s", server.server_address, "status"]) == 2
    err = _one_line_error(capsys, server.server_address)
    assert f"permission denied on {server.server_address}" in err


def test_connection_closed_before_a_reply(serve, capsys):
    server = serve(lambda request: None)
    assert main(["-s", server.server_address, "status"]) == 2
    path = server.server_address
    assert _one_line_error(capsys, path) == (
        f"gunicorn-companion: connection to {path} closed before a reply\n"
    )


def test_half_a_reply_then_close(serve, capsys):
    server = serve(lambda request: [b'{"ok": tru'])
    assert main(["-s", server.server_address, "status"]) == 2
    err = _one_line_error(capsys, server.server_address)
    assert "closed before a reply" in err


def test_timeout(serve, capsys):
    server = serve(lambda request: HANG)
    started = time.monotonic()
    assert main(["-s", server.server_address, "--timeout", "0.2", "status"]) == 2
    # A lower bound cannot flake; the message below shows 0.2 s was the limit
    # (without one the client would hang and the test never get here).
    assert time.monotonic() - started >= 0.2
    err = _one_line_error(capsys, server.server_address)
    assert err == f"gunicorn-companion: timed out after 0.2s waiting for {server.server_address}\n"


@pytest.mark.parametrize(
    ("pieces", "detail"),
    [
        ([b"hello\n"], "not JSON"),
        ([b"[1, 2]\n"], "expected a JSON object, got list"),
        ([b'{"message": "hi"}\n'], 'no boolean "ok" field'),
        ([b'{"ok": "yes"}\n'], 'no boolean "ok" field'),
        ([b"\xff\xfe\n"], "not JSON"),
    ],
)
def test_invalid_reply(serve, capsys, pieces, detail):
    server = serve(lambda request: pieces)
    assert main(["-s", server.server_address, "status"]) == 2
    err = _one_line_error(capsys, server.server_address)
    assert f"invalid reply from {server.server_address}: " in err
    assert detail in err


# -- main(): usage errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "required"),
        (["start"], "NAME"),
        (["stop"], "NAME"),
        (["stauts"], "invalid choice"),
        (["status", "extra"], "unrecognized arguments"),
        (["--timeout", "0", "status"], "must be a positive number of seconds"),
        (["status", "--timeout", "-1"], "must be a positive number of seconds"),
        (["status", "--timeout", "soon"], "must be a positive number of seconds, got 'soon'"),
        (["status", "--timeout", "nan"], "must be a positive number of seconds"),
        (["--bogus", "status"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(capsys, monkeypatch, argv, fragment):
    monkeypatch.setenv(ctl.SOCKET_ENV, "/nonexistent/ctl.sock")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: gunicorn-companion" in err
    assert fragment in err


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["start", "-h"]])
def test_help_exits_0(capsys, argv):
    assert main(argv) == 0
    assert "usage: gunicorn-companion" in capsys.readouterr().out


# -- client.stream --------------------------------------------------------------------------


def test_stream_yields_each_reply_until_close(serve):
    lines = [{"ok": True, "line": f"log {i}"} for i in range(3)]
    server = serve(lambda request: [json.dumps(obj).encode() + b"\n" for obj in lines])
    got = list(client.stream(server.server_address, {"cmd": "status"}, timeout=10))
    assert got == lines


def test_stream_with_no_reply_at_all_is_an_error(serve):
    server = serve(lambda request: None)
    with pytest.raises(client.ClientError, match="closed before a reply"):
        list(client.stream(server.server_address, {"cmd": "status"}, timeout=10))


def test_call_error_carries_the_path(sock_dir):
    path = str(sock_dir / "missing.sock")
    with pytest.raises(client.ClientError) as info:
        client.call(path, {"cmd": "status"}, timeout=1)
    assert info.value.path == path


# -- as a real process -------------------------------------------------------------------------


def _run(code: str, extra_path: str | None = None) -> subprocess.CompletedProcess:
    paths = [p for p in (extra_path, str(SRC)) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop(ctl.SOCKET_ENV, None)
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_ctl_does_not_import_gunicorn(tmp_path):
    # A stand-in gunicorn first on the path makes any import visible in
    # sys.modules, whether or not the real one is installed here.
    fake = tmp_path / "fake"
    (fake / "gunicorn").mkdir(parents=True)
    (fake / "gunicorn" / "__init__.py").write_text("")
    code = (
        "import sys\n"
        "from gunicorn_companion import ctl, client, protocol\n"
        "code = ctl.main(['-s', '/nonexistent/ctl.sock', 'status'])\n"
        "ctl.main(['--help'])\n"
        "print(code, 'gunicorn' in sys.modules,\n"
        "      sorted(m for m in sys.modules if m.split('.')[0] == 'gunicorn'))\n"
    )
    result = _run(code, extra_path=str(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "2 False []"


def test_module_entry_point_reports_without_traceback():
    result = _run(
        "import runpy, sys\n"
        "sys.argv = ['gunicorn-companion', '-s', '/nonexistent/ctl.sock', 'status']\n"
        "runpy.run_module('gunicorn_companion.ctl', run_name='__main__')\n"
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "gunicorn-companion: cannot connect to /nonexistent/ctl.sock: No such file or directory "
        "(is Gunicorn running with companion_control_socket set?)\n"
    )


@pytest.mark.parametrize("companion, shown", [
    ({"stdout": "inherit", "stderr": "inherit"}, "inherit"),
    ({"stdout": "/l/a.log", "stderr": "stdout"}, "/l/a.log"),
    ({"stdout": "/l/a.log", "stderr": "/l/a.err"}, "/l/a.log, /l/a.err"),
    ({"stdout": "inherit", "stderr": "/l/a.err"}, "inherit, /l/a.err"),
    ({}, "-"),
])
def test_format_output(companion, shown):
    from gunicorn_companion.ctl import format_output
    assert format_output(companion) == shown


@pytest.mark.parametrize("stopping, shown", [
    ({"seconds": 12.4, "signal": "SIGTERM", "timeout": 120, "group_left": 3},
     "SIGTERM sent 12s ago, 3 processes left, SIGKILL in 1m47s"),
    ({"seconds": 0.2, "signal": "SIGINT", "timeout": 10, "group_left": 1},
     "SIGINT sent 0s ago, 1 process left, SIGKILL in 9s"),
    ({"seconds": 125, "signal": "SIGKILL", "timeout": 120, "group_left": 1},
     "stopping for 2m05s, SIGKILL sent, 1 process left"),
    ({"seconds": 130, "signal": "SIGTERM", "timeout": 120, "group_left": 0},
     "SIGTERM sent 2m10s ago, 0 processes left, SIGKILL in 0s"),
    ({"signal": "SIGTERM"}, "SIGTERM sent - ago"),
])
def test_format_stopping(stopping, shown):
    from gunicorn_companion.ctl import format_note
    assert format_note({"stopping": stopping, "waiting": "ready()"}) == shown


# -- finding the socket: -s, -c FILE, the environment, ./gunicorn.conf.py ------------------


def _conf(directory: Path, text: str, name: str = "gunicorn.conf.py") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("flag_s", "flag_c", "env", "cwd_conf", "expected"),
    [
        ("/s.sock", None, "/env.sock", "x = 1\ncompanion_control_socket = '/conf.sock'",
         "/s.sock"),
        (None, "other.conf.py", "/env.sock", None, "/other.sock"),
        (None, None, "/env.sock", "companion_control_socket = '/conf.sock'", "/env.sock"),
        (None, None, "", "companion_control_socket = '/conf.sock'", "/conf.sock"),
        # relative: from the directory Gunicorn runs in, its chdir or here
        (None, None, "", "companion_control_socket = 'var/c.sock'", "{cwd}/var/c.sock"),
        (None, None, "", "chdir = '/srv/app'\ncompanion_control_socket = 'var/c.sock'",
         "/srv/app/var/c.sock"),
        # executed as Gunicorn does: __file__ and __name__ are there
        (None, None, "", "import os\nassert __name__ == '__config__'\n"
         "companion_control_socket = os.path.join(os.path.dirname(__file__), 'c.sock')",
         "{cwd}/c.sock"),
    ],
)
def test_find_socket(tmp_path, flag_s, flag_c, env, cwd_conf, expected):
    _conf(tmp_path, "companion_control_socket = '/other.sock'", "other.conf.py")
    if cwd_conf is not None:
        _conf(tmp_path, cwd_conf)
    config = str(tmp_path / flag_c) if flag_c else None
    found = ctl.find_socket(flag_s, config, {ctl.SOCKET_ENV: env}, str(tmp_path))
    assert found == expected.format(cwd=tmp_path)


@pytest.mark.parametrize(
    ("conf", "fragment"),
    [
        (None, "no control socket: pass -s PATH or -c gunicorn.conf.py, set "
               "GUNICORN_COMPANION_SOCKET, or run this where gunicorn.conf.py is"),
        ("workers = 2\n", "gunicorn.conf.py sets no companion_control_socket"),
        ("companion_control_socket = 5\n", "companion_control_socket must be a path, got int"),
        ("workers = (\n", "cannot read config file {cwd}/gunicorn.conf.py: SyntaxError"),
        ("raise SystemExit(3)\n", "SystemExit: 3"),
        ("import no_such_module_here\n", "ModuleNotFoundError: No module named"),
    ],
)
def test_find_socket_faults_name_the_file_and_the_fault(tmp_path, conf, fragment):
    if conf is not None:
        _conf(tmp_path, conf)
    with pytest.raises(ctl.SocketNotFound) as caught:
        ctl.find_socket(None, None, {}, str(tmp_path))
    assert fragment.format(cwd=tmp_path) in str(caught.value)


def test_dash_s_and_dash_c_together_is_a_usage_error(capsys):
    assert main(["-s", "/a.sock", "-c", "/b.conf.py", "status"]) == 2
    assert "give -s PATH or -c FILE, not both" in capsys.readouterr().err


def test_missing_config_file_named(tmp_path, capsys):
    assert main(["-c", str(tmp_path / "nope.conf.py"), "status"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read config file {tmp_path}/nope.conf.py: No such file or directory" in err


@pytest.mark.parametrize("form", [["-c", "{conf}", "status"], ["status", "--config", "{conf}"],
                                  ["status"]])
def test_status_through_the_config_file(serve, capsys, monkeypatch, sock_dir, form):
    server = serve(_manager)
    conf = _conf(sock_dir, f"companion_control_socket = {server.server_address!r}\n")
    monkeypatch.chdir(sock_dir)
    assert main([arg.format(conf=conf) for arg in form]) == 0
    assert "scheduler  RUNNING" in capsys.readouterr().out


# -- check ---------------------------------------------------------------------------------

RUNNING_ONE = {"name": "a", "state": "RUNNING", "pid": 1}
FATAL_ONE = {"name": "b", "state": "FATAL", "pid": None, "last_exit": {"code": 3}}
BACKOFF_ONE = {"name": "c", "state": "BACKOFF", "pid": None, "group": "pool",
               "last_exit": {"signal": "SIGKILL"},
               "backoff": {"seconds": 130.2, "failures": 4, "retry_in": 7.5}}
BY_HAND = {"name": "d", "state": "STOPPED", "pid": None, "wanted": False}
STARTING_ONE = {"name": "e", "state": "STARTING", "pid": 5, "waiting": "startsecs (2s)"}


@pytest.mark.parametrize(
    ("companions", "names", "healthy", "failing"),
    [
        ([RUNNING_ONE, BY_HAND], [], True, []),
        ([], [], True, []),
        ([RUNNING_ONE, FATAL_ONE, BACKOFF_ONE], [], False, ["b", "c"]),
        ([RUNNING_ONE, FATAL_ONE], ["a"], True, []),
        ([RUNNING_ONE, BACKOFF_ONE], ["pool"], False, ["c"]),
        ([STARTING_ONE], [], False, ["e"]),
        ([BY_HAND], ["d"], True, []),
    ],
)
def test_assess_health(companions, names, healthy, failing):
    verdict = ctl.assess_health(companions, names)
    assert verdict["healthy"] is healthy
    assert [p["name"] for p in verdict["not_running"]] == failing


@pytest.mark.parametrize(
    ("companion", "reason"),
    [
        (FATAL_ONE, "gave up restarting it, last exit: exit 3"),
        (BACKOFF_ONE, "backing off for 2m10s, 4 failed starts in a row, next try in 7s, "
                      "last exit: SIGKILL"),
        (STARTING_ONE, "waiting for startsecs (2s)"),
        ({"name": "x", "state": "STOPPING"}, "stopping"),
    ],
)
def test_why_not_running(companion, reason):
    assert ctl.why_not_running(companion) == reason


def _status_of(*companions):
    return lambda request: _reply({"ok": True, "companions": list(companions)})


def test_check_healthy_exits_0(serve, capsys):
    server = serve(_status_of(RUNNING_ONE, BY_HAND))
    assert main(["-s", server.server_address, "check"]) == 0
    assert capsys.readouterr().out == "OK: 1/1 companion RUNNING\nnot counted (stopped): d\n"
    assert server.requests == [{"cmd": "status"}]


def test_check_names_each_failure_and_exits_1(serve, capsys):
    server = serve(_status_of(RUNNING_ONE, FATAL_ONE, BACKOFF_ONE))
    assert main(["-s", server.server_address, "check"]) == 1
    assert capsys.readouterr().out == (
        "FAIL: 1/3 companions RUNNING\n"
        "b: FATAL (gave up restarting it, last exit: exit 3)\n"
        "c: BACKOFF (backing off for 2m10s, 4 failed starts in a row, next try in 7s, "
        "last exit: SIGKILL)\n")


def test_check_json(serve, capsys):
    server = serve(_status_of(RUNNING_ONE, FATAL_ONE))
    assert main(["-s", server.server_address, "check", "--json", "a", "b"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict == {"healthy": False, "reachable": True, "checked": ["a", "b"],
                       "not_running": [{"name": "b", "state": "FATAL",
                                        "reason": "gave up restarting it, last exit: exit 3"}],
                       "stopped_by_hand": []}


def test_check_unreachable_exits_2(sock_dir, capsys):
    path = str(sock_dir / "gone.sock")
    assert main(["-s", path, "check", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["reachable"] is False
    assert path in err


def test_check_unknown_name_exits_2(serve, capsys):
    server = serve(_status_of(RUNNING_ONE))
    assert main(["-s", server.server_address, "check", "a", "zz"]) == 2
    assert "no companion or group named 'zz'" in capsys.readouterr().err


# -- the status table fits the terminal ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        ("/srv/app/logs/worker.log", 30, "/srv/app/logs/worker.log"),
        ("/srv/app/logs/worker.log", 16, "/srv...orker.log"),
        ("abcdef", 3, "abc"),
    ],
)
def test_shorten_middle(text, width, shown):
    assert ctl.shorten_middle(text, width) == shown
    assert len(shown) == min(len(text), width)


LONG_OUTPUT = {"name": "rq-default", "state": "RUNNING", "pid": 4242, "uptime": 75,
               "restarts": 0, "stdout": "/srv/frappe-bench/logs/" + "w" * 40 + ".log",
               "stderr": "/srv/frappe-bench/logs/" + "w" * 40 + ".error.log",
               "waiting": "nothing at all but a long note to cut at the end"}


@pytest.mark.parametrize("width", [60, 80, 100, 120])
def test_format_status_fits_the_width(width):
    text = format_status({"ok": True, "companions": [LONG_OUTPUT]}, width)
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "..." in text


def test_format_status_wide_keeps_every_path_whole():
    text = format_status({"ok": True, "companions": [LONG_OUTPUT]}, None)
    assert LONG_OUTPUT["stdout"] in text and LONG_OUTPUT["stderr"] in text


def test_status_uses_columns_and_wide_overrides_it(serve, capsys, monkeypatch):
    server = serve(_status_of(LONG_OUTPUT))
    monkeypatch.setenv("COLUMNS", "72")
    assert main(["-s", server.server_address, "status"]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 72
    assert main(["-s", server.server_address, "status", "--wide"]) == 0
    assert LONG_OUTPUT["stderr"] in capsys.readouterr().out


def test_status_into_a_pipe_keeps_paths_whole(serve, capsys, monkeypatch):
    server = serve(_status_of(LONG_OUTPUT))
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["-s", server.server_address, "status"]) == 0  # capsys: not a terminal
    assert LONG_OUTPUT["stderr"] in capsys.readouterr().out
