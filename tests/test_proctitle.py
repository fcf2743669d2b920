"""Processes that say what they are: titles in ps, names in comm."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import control_config, status

from gunicorn_companion import proctitle

COMPANIONS = """[
    {"name": "scheduler", "target": "compapp:sleeper"},
    {"name": "rq", "target": "compapp:sleeper", "processes": 2},
    {"name": "notifications-dispatcher", "target": "compapp:sleeper"},
    {"name": "hands-off", "target": "compapp:hands_off_to_a_program", "wait_ready": True},
    {"name": "relay", "command": ["sleep", "infinity"]}]"""


@pytest.mark.parametrize("name, comm", [
    ("scheduler", "scheduler"),
    ("rq:0", "rq:0"),
    ("exactly-15-byte", "exactly-15-byte"),
    ("notifications-dispatcher", "notifications-d"),
    ("celery-high-priority:12", "celery-high-:12"),  # the instance tells them apart
    ("worker:1234567890123456", "worker:12345678"),  # no room for the base: cut at the end
])
def test_comm_of(name, comm):
    assert proctitle.comm_of(name) == comm
    assert len(proctitle.comm_of(name).encode()) <= proctitle.COMM_BYTES


def ps(pid: int) -> tuple[str, str]:
    """What ps shows: (comm, args)."""
    out = subprocess.run(["ps", "-o", "comm=,args=", "-p", str(pid)], capture_output=True,
                         text=True, timeout=30).stdout
    comm, _, args = out.strip().partition(" ")
    return comm, args.strip()


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def hide_setproctitle(tmp_path) -> dict:
    """An environment in which ``import setproctitle`` fails, as it does
    where only gunicorn-companion was installed."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "setproctitle.py").write_text(
        'raise ImportError("setproctitle is hidden for this test")\n')
    return {"PYTHONPATH": str(hidden)}


@pytest.mark.parametrize("with_setproctitle", [True, False],
                         ids=["setproctitle", "no-setproctitle"])
def test_ps_and_comm_name_the_manager_and_each_companion(server, sock_path, tmp_path,
                                                         with_setproctitle):
    if with_setproctitle:
        pytest.importorskip("setproctitle")
    env = {} if with_setproctitle else hide_setproctitle(tmp_path)
    srv = server(control_config(sock_path, COMPANIONS, 'proc_name = "shop"'), env=env)
    srv.until(lambda: sock_path.exists() and all(
        c["state"] == "RUNNING" for c in status(sock_path).values()), message="all RUNNING")
    pids = {name: c["pid"] for name, c in status(sock_path).items()}
    manager = srv.wait_manager()
    assert ps(manager) == ("companion-mgr", "gunicorn: companion manager [shop]")
    expected = {"scheduler": "scheduler", "rq:0": "rq:0", "rq:1": "rq:1",
                "notifications-dispatcher": "notifications-d"}
    for name, comm in expected.items():
        title = f"gunicorn: companion {name} [shop]"
        # set moments after the fork, before the target runs: RUNNING came
        # startsecs later, but a loaded machine may schedule the child late
        srv.until(lambda p=pids[name], shown=(comm, title): ps(p) == shown,
                  message=f"{name}'s title and comm in ps")
        with open(f"/proc/{pids[name]}/comm") as f:
            assert f.read() == comm + "\n"
        # the title alone, whatever padding follows it
        assert cmdline(pids[name]).rstrip(b"\0") == title.encode()
    # pgrep finds a companion by its name, as top shows it
    found = subprocess.run(["pgrep", "-x", "scheduler"], capture_output=True, text=True)
    assert str(pids["scheduler"]) in found.stdout.split()
    # a companion that execs shows the program it became: exec replaces both
    comm, args = ps(pids["hands-off"])
    assert args.startswith(f"{sys.executable} -c import os, signal")
    assert comm.startswith("python")
    srv.until(lambda: ps(pids["relay"]) == ("sleep", "sleep infinity"), message="relay's exec")


def test_the_title_fits_a_short_argument_area(tmp_path):
    """A command line shorter than the title: the title is cut, never
    written past the area (the environment after it stays intact)."""
    code = ("import os, sys\n"
            "from gunicorn_companion import proctitle\n"
            "assert proctitle.write_argument_area('gunicorn: companion ' + 'x' * 500)\n"
            "sys.stdout.write(open('/proc/self/cmdline', 'rb').read().hex() + ' ')\n"
            "sys.stdout.write(os.environ['MARKER'])\n")
    script = tmp_path / "t.py"
    script.write_text(code)
    env = {"MARKER": "environment intact", **hide_setproctitle(tmp_path),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    shown, marker = out.stdout.split(" ", 1)
    area = len(f"{sys.executable}\0{script}\0")
    data = bytes.fromhex(shown)
    assert len(data) == area and data.endswith(b"\0")
    assert data.rstrip(b"\0") == b"gunicorn: companion " + b"x" * (area - 1 - 20)
    assert marker == "environment intact"


@pytest.mark.skipif(os.geteuid() != 0, reason="the other tests already run as a user")
def test_the_title_is_written_as_an_unprivileged_user_too(tmp_path):
    """Any user may write its own memory: a companion dropped to nobody
    titles itself as a root one does."""
    src = str(Path(proctitle.__file__).parent.parent)
    code = ("from gunicorn_companion import proctitle\n"
            "assert proctitle.write_argument_area('gunicorn: companion x [y]')\n"
            "assert proctitle.set_comm('x')\n"
            "print(open('/proc/self/cmdline', 'rb').read().rstrip(b'\\0').decode(),"
            " open('/proc/self/comm').read().strip(), sep='|')\n")
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            out = subprocess.run([python, "-c", code, "an argument to make room"],
                                 capture_output=True, text=True, timeout=30, user=65534,
                                 group=65534, extra_groups=[], env={"PYTHONPATH": src})
        except PermissionError:
            continue  # an interpreter under a directory only root may enter
        if "No module named" in out.stderr:
            continue
        assert out.returncode == 0, out.stderr
        assert out.stdout == "gunicorn: companion x [y]|x\n"
        return
    pytest.skip("no Python interpreter and source tree that user nobody may read")
