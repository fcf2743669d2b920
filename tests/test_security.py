"""Security (docs/security.md): privileges, untrusted directories, the control socket.

Every attack here is real: real system users (created when the tests run as
root, as in CI), files they create, a root Gunicorn that drops to a user.
"""

import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support import Control, Server, request_as, short_socket_path

from gunicorn_companion.spec import ConfigError, parse_companions

SERVICE = "gcsec-svc"  # the user Gunicorn drops its workers to
OTHER = "gcsec-other"  # another local user: an attacker, or a companion's own user
MEMBER = "gcsec-member"  # in CONTROL_GROUP through a supplementary group only
CONTROL_GROUP = "gcsec-ctl"

as_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: creates system users and runs a root Gunicorn that drops to them")


def _run_until_done(argv: list[str]) -> None:
    """useradd/groupadd, retried while another process holds /etc/passwd's lock."""
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode in (0, 9):  # 9: the name exists (made by a concurrent run)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{argv} failed: {result.stderr}")
        time.sleep(0.2)


def _ensure_group(name: str) -> grp.struct_group:
    try:
        return grp.getgrnam(name)
    except KeyError:
        _run_until_done(["groupadd", "--system", name])
        return grp.getgrnam(name)


def _ensure_user(name: str, groups: tuple[str, ...] = ()) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        argv = ["useradd", "--system", "--user-group", "--no-create-home",
                "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        _run_until_done([*argv, name])
        return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def users():
    """Fixed names, created once and reused by later runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create system users")
    _ensure_group(CONTROL_GROUP)
    return {name: _ensure_user(name, groups) for name, groups in
            ((SERVICE, ()), (OTHER, ()), (MEMBER, (CONTROL_GROUP,)))}


@pytest.fixture
def shared(tmp_path):
    """A directory the test users can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="gcsec-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(shared):
    """Factory: ``serve(config, env=...)`` -> a started Server under ``shared``."""
    started = []

    def make(config: str, env: dict | None = None, start: bool = True) -> Server:
        root = shared / f"srv{len(started)}"
        root.mkdir(mode=0o755)
        srv = Server(root, config)
        srv.state.chmod(0o1777)  # companions of every user record their starts here
        srv.env.update(env or {})
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.cleanup()


def as_user(name: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run a small stdlib-only script as another user (the attacker)."""
    entry = pwd.getpwnam(name)
    return subprocess.run(argv, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
                          capture_output=True, text=True, timeout=30, check=True)


def proc_ids(pid: int) -> dict[str, list[int]]:
    """Uid and Gid (real, effective, saved, fs) and Groups from /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(v) for v in value.split()]
    return found


def identity(srv: Server, name: str) -> dict:
    path = srv.state / f"{name}.identity.json"
    srv.until(path.exists, message=f"{name} to record its identity")
    return json.loads(path.read_text())


def lock_name(srv: Server, name: str) -> str:
    """The singleton lock file's name (manager.lock_path)."""
    return f"{hashlib.sha256(str(srv.config_path).encode()).hexdigest()[:12]}-{name}.lock"


@pytest.fixture
def sock_dir():
    path = short_socket_path().parent
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- 1. companions run with the privileges Gunicorn gives its workers -----------------------


@as_root
@pytest.mark.parametrize("initgroups", [False, True])
def test_the_manager_and_its_companions_drop_to_gunicorns_user(serve, users, initgroups):
    user = MEMBER if initgroups else SERVICE
    entry = users[user]
    srv = serve(f"""
        preload_app = True
        workers = 1
        user = {user!r}
        group = {user!r}
        initgroups = {initgroups}
        companion_workers = [{{"name": "who", "target": "compapp:whoami", "startsecs": 0}}]
        """)
    seen = identity(srv, "who")
    uid, gid = entry.pw_uid, entry.pw_gid
    expected_groups = sorted(os.getgrouplist(user, gid)) if initgroups else [gid]
    assert seen == {"resuid": [uid] * 3, "resgid": [gid] * 3, "groups": expected_groups,
                    "pdeathsig": 9, "regained_root": False}
    manager = proc_ids(srv.wait_manager())
    assert manager["Uid"] == [uid] * 4 and manager["Gid"] == [gid] * 4, manager
    assert sorted(manager["Groups"]) == expected_groups


@as_root
def test_a_companion_with_its_own_user_runs_as_it_and_owns_its_files(serve, users, sock_dir):
    service, other = users[SERVICE], users[OTHER]
    sock_dir.chmod(0o755)
    sock = sock_dir / "c.sock"
    srv = serve(f"""
        preload_app = True
        workers = 1
        user = {SERVICE!r}
        group = {SERVICE!r}
        companion_control_socket = {str(sock)!r}
        companion_lock_dir = os.path.join(os.path.dirname(__file__), "locks")
        companion_workers = [
            {{"name": "who", "target": "compapp:whoami", "startsecs": 0}},
            {{"name": "own", "target": "compapp:whoami", "startsecs": 0, "user": {OTHER!r},
              "singleton": True, "stdout": "logs/own.log"}},
        ]
        """, start=False)
    (srv.root / "logs").mkdir(mode=0o755)
    srv.start()
    assert identity(srv, "who")["resuid"] == [service.pw_uid] * 3
    own = identity(srv, "own")
    assert own["resuid"] == [other.pw_uid] * 3 and own["resgid"] == [other.pw_gid] * 3
    assert own["groups"] == sorted(os.getgrouplist(OTHER, other.pw_gid))
    assert own["regained_root"] is False and own["pdeathsig"] == 9
    # only now does the manager keep root: it must become two users
    assert proc_ids(srv.wait_manager())["Uid"] == [0] * 4
    log = srv.root / "logs" / "own.log"
    srv.until(lambda: "hello from own" in log.read_text(), message="own's output")
    assert (log.stat().st_uid, log.stat().st_gid) == (other.pw_uid, other.pw_gid)
    lock = srv.root / "locks" / lock_name(srv, "own")
    assert lock.stat().st_uid == other.pw_uid
    assert (sock.stat().st_uid, sock.stat().st_gid) == (service.pw_uid, service.pw_gid)
    reply = request_as(sock, {"cmd": "status"}, uid=service.pw_uid, gid=service.pw_gid,
                       groups=[service.pw_gid])
    assert reply.get("ok") is True, reply


@pytest.mark.parametrize(("entry", "message"), [
    ({"user": "gcsec-no-such-user"}, "companion 'w': user 'gcsec-no-such-user' does not exist"),
    ({"group": "gcsec-no-such-group"},
     "companion 'w': group 'gcsec-no-such-group' does not exist"),
    ({"user": 4242424}, "companion 'w': user 4242424 does not exist"),
    ({"user": ""}, "companion 'w': user must be a user name or uid, got ''"),
    ({"group": True}, "companion 'w': group must be a group name or gid, got True"),
])
def test_user_and_group_must_exist(entry, message):
    with pytest.raises(ConfigError) as caught:
        parse_companions([{"name": "w", "target": "m:f", **entry}])
    assert caught.value.problems == [message]


def test_user_and_group_by_name_or_id():
    root_group = grp.getgrgid(0).gr_name
    spec, = parse_companions([{"name": "w", "target": "m:f", "user": 0, "group": root_group}])
    assert (spec.user, spec.unix_group) == ("0", root_group)
    spec, = parse_companions([{"name": "w", "target": "m:f"}])
    assert (spec.user, spec.unix_group) == (None, None)


# -- 2. nothing another local user prepared is trusted ---------------------------------------


def _attacker_prepares_lock_dir(fake_tmp: Path, lock: str, victim: Path) -> Path:
    lock_dir = fake_tmp / f"gunicorn-companion-{os.getuid()}"
    as_user(OTHER, ["python3", "-c", f"""
import os
os.mkdir({str(lock_dir)!r})
os.chmod({str(lock_dir)!r}, 0o777)
os.symlink({str(victim)!r}, os.path.join({str(lock_dir)!r}, {lock!r}))
"""])
    return lock_dir


@as_root
def test_a_lock_dir_another_user_made_is_refused(serve, users, shared):
    fake_tmp = shared / "tmp"
    fake_tmp.mkdir()
    fake_tmp.chmod(0o1777)
    victim = shared / "created-by-root"  # where OTHER may not write
    srv = serve("""
        preload_app = True
        workers = 1
        companion_workers = [{"name": "single", "target": "compapp:sleeper", "singleton": True}]
        """, start=False)
    # no XDG_RUNTIME_DIR, as for a service started as root: the lock dir is in TMPDIR
    del srv.env["XDG_RUNTIME_DIR"]
    srv.env.update(TMPDIR=str(fake_tmp), HOME=str(srv.root))
    lock_dir = _attacker_prepares_lock_dir(fake_tmp, lock_name(srv, "single"), victim)
    srv.start()
    srv.watch_exit = False
    srv.until(lambda: srv.proc.poll() is not None or victim.exists(),
              message="the boot to fail, or the attack to succeed")
    assert not victim.exists(), "root followed the attacker's symlink"
    assert srv.wait_exit() == 1
    assert (f"companion_lock_dir {str(lock_dir)!r} is owned by uid {users[OTHER].pw_uid} "
            f"({OTHER}), not by uid 0 (root) that the companion manager runs as") in srv.log()


@as_root
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_lock_dir_others_can_write_is_refused(serve, users, shared, mode):
    lock_dir = shared / "locks"
    lock_dir.mkdir()
    lock_dir.chmod(mode)
    srv = serve(f"""
        preload_app = True
        workers = 1
        companion_lock_dir = {str(lock_dir)!r}
        companion_workers = [{{"name": "single", "target": "compapp:sleeper", "singleton": True}}]
        """)
    assert srv.wait_exit() == 1
    assert (f"companion_lock_dir {str(lock_dir)!r} is writable by group or others "
            f"(mode {mode:04o})") in srv.log()


@as_root
@pytest.mark.parametrize("planted", ["a file of another user", "a symlink"])
def test_a_lock_file_we_do_not_own_is_refused(serve, users, shared, planted):
    lock_dir = shared / "locks"
    lock_dir.mkdir(mode=0o777)
    lock_dir.chmod(0o777)  # open for the attacker while the deployment was set up...
    srv = serve(f"""
        preload_app = True
        workers = 1
        companion_lock_dir = {str(lock_dir)!r}
        companion_workers = [{{"name": "single", "target": "compapp:sleeper", "singleton": True,
                              "restart_delay": 0.2}}]
        """, start=False)
    lock = lock_dir / lock_name(srv, "single")
    victim = shared / "created-by-root"
    if planted == "a symlink":
        as_user(OTHER, ["python3", "-c", f"import os; os.symlink({str(victim)!r}, {str(lock)!r})"])
        expected = f"lock file {str(lock)!r} is a symbolic link; refusing to follow it"
    else:
        as_user(OTHER, ["python3", "-c", f"open({str(lock)!r}, 'w').close()"])
        expected = (f"lock file {str(lock)!r} is owned by uid {users[OTHER].pw_uid} ({OTHER}), "
                    "not by uid 0 (root)")
    # ...and held by the attacker for ever: the singleton must not wait on it
    holder = subprocess.Popen(
        ["python3", "-c", f"import fcntl, time\nf = open({str(lock)!r})\n"
                          "fcntl.flock(f, fcntl.LOCK_SH)\nprint('held', flush=True)\n"
                          "time.sleep(300)"],
        user=users[OTHER].pw_uid, group=users[OTHER].pw_gid, extra_groups=[],
        stdout=subprocess.PIPE, text=True) if planted != "a symlink" else None
    try:
        if holder:
            assert holder.stdout.readline() == "held\n"
        lock_dir.chmod(0o700)  # ...then made private: only the planted file is left
        srv.start()
        srv.wait_log(f"could not be started: {expected}")
        assert not victim.exists()
    finally:
        if holder:
            holder.kill()
            holder.wait()


@as_root
@pytest.mark.parametrize("fault", ["writable by others", "owned by another user"])
def test_a_control_socket_directory_others_can_write_is_refused(serve, users, sock_dir, fault):
    if fault == "writable by others":
        sock_dir.chmod(0o777)
        expected = "is writable by group or others (mode 0777)"
    else:
        os.chown(sock_dir, users[OTHER].pw_uid, users[OTHER].pw_gid)
        expected = f"is owned by uid {users[OTHER].pw_uid} ({OTHER}), not by uid 0 (root)"
    sock = sock_dir / "c.sock"
    srv = serve(f"""
        preload_app = True
        workers = 1
        companion_control_socket = {str(sock)!r}
        companion_workers = [{{"name": "a", "target": "compapp:sleeper"}}]
        """)
    assert srv.wait_exit() == 1
    assert f"control socket directory {str(sock_dir)!r} {expected}" in srv.log()
    assert not sock.exists()


@as_root
@pytest.mark.parametrize("planted", ["a symlink", "a file of another user"])
def test_a_log_file_planted_in_a_directory_others_can_write_is_refused(serve, users, shared,
                                                                     planted):
    srv = serve("""
        preload_app = True
        workers = 1
        companion_workers = [{"name": "w", "target": "compapp:whoami", "stdout": "logs/w.log",
                              "restart_delay": 0.2}]
        """, start=False)
    logs = srv.root / "logs"
    logs.mkdir()
    logs.chmod(0o777)  # not sticky: fs.protected_symlinks and protected_regular do not apply
    log = logs / "w.log"
    victim = shared / "victim"
    victim.write_text("precious\n")
    if planted == "a symlink":
        as_user(OTHER, ["python3", "-c", f"import os; os.symlink({str(victim)!r}, {str(log)!r})"])
        expected = (f"log file {str(log)!r} is a symbolic link in a directory others can write; "
                    "refusing to follow it")
    else:
        as_user(OTHER, ["python3", "-c", f"open({str(log)!r}, 'w').close()"])
        expected = (f"log file {str(log)!r} is owned by uid {users[OTHER].pw_uid} ({OTHER}), "
                    "not by uid 0 (root) in a directory others can write; refusing to write it")
    srv.start()
    # the companion runs; what it prints is dropped (and counted) until the
    # path is fixed, never written through the planted file
    srv.wait_log(f"Companion output to {log} failed ({expected}): dropping lines")
    srv.until(lambda: srv.starts("w"), message="the companion to start all the same")
    assert victim.read_text() == "precious\n"
    if planted != "a symlink":
        assert log.read_text() == ""


# -- 3. the control socket's group includes supplementary members --------------------------


@as_root
def test_a_member_of_the_sockets_group_through_a_supplementary_group_may_control(
        serve, users, sock_dir):
    service, member = users[SERVICE], users[MEMBER]
    control_gid = grp.getgrnam(CONTROL_GROUP).gr_gid
    os.chown(sock_dir, service.pw_uid, control_gid)
    sock_dir.chmod(0o750)
    sock = sock_dir / "c.sock"
    srv = serve(f"""
        preload_app = True
        workers = 1
        user = {SERVICE!r}
        group = {CONTROL_GROUP!r}
        companion_control_socket = {str(sock)!r}
        companion_control_socket_mode = 0o660
        companion_workers = [{{"name": "a", "target": "compapp:sleeper"}}]
        """)
    srv.wait_log("Companion control socket listening at")
    assert sock.stat().st_gid == control_gid
    groups = os.getgrouplist(MEMBER, member.pw_gid)
    assert control_gid in groups and member.pw_gid != control_gid
    reply = request_as(sock, {"cmd": "status"}, uid=member.pw_uid, gid=member.pw_gid,
                       groups=groups)
    assert reply.get("ok") is True, reply
    # and without the group, the same user is refused
    reply = request_as(sock, {"cmd": "status"}, uid=member.pw_uid, gid=member.pw_gid,
                       groups=[member.pw_gid])
    assert "client failed" in reply and "PermissionError" in reply["client failed"], reply


@as_root
def test_the_root_managers_group_through_a_supplementary_group(serve, users, sock_dir):
    member = users[MEMBER]
    sock_dir.chmod(0o755)
    sock = sock_dir / "c.sock"
    srv = serve(f"""
        preload_app = True
        workers = 1
        companion_control_socket = {str(sock)!r}
        companion_control_socket_mode = 0o660
        companion_workers = [{{"name": "a", "target": "compapp:sleeper"}}]
        """)
    srv.wait_log("Companion control socket listening at")
    reply = request_as(sock, {"cmd": "status"}, uid=member.pw_uid, gid=member.pw_gid,
                       groups=[member.pw_gid, os.getgid()])
    assert reply.get("ok") is True, reply


@as_root
def test_a_reread_cannot_add_a_user_once_the_manager_dropped_root(serve, users, sock_dir):
    sock_dir.chmod(0o755)
    os.chown(sock_dir, users[SERVICE].pw_uid, users[SERVICE].pw_gid)
    sock = sock_dir / "c.sock"
    config = f"""
        preload_app = True
        workers = 1
        user = {SERVICE!r}
        group = {SERVICE!r}
        companion_control_socket = {str(sock)!r}
        companion_workers = [{{"name": "a", "target": "compapp:sleeper"}}{{more}}]
        """
    srv = serve(config.replace("{more}", ""))
    srv.wait_starts("a")
    srv.write_config(config.replace(
        "{more}", f', {{"name": "b", "target": "compapp:sleeper", "user": {OTHER!r}}}'))
    reply = Control(sock).request({"cmd": "reread"})
    assert reply["ok"] is False
    assert (f"companion 'b': cannot run as uid {users[OTHER].pw_uid} ({OTHER}), "
            f"gid {users[OTHER].pw_gid} ({OTHER}): the companion manager runs as "
            f"uid {users[SERVICE].pw_uid} ({SERVICE}) without root") in reply["error"]
    assert [c["name"] for c in Control(sock).request({"cmd": "status"})["companions"]] == ["a"]


@as_root
def test_max_memory_is_enforced_after_the_drop(serve, users):
    srv = serve(f"""
        preload_app = True
        workers = 1
        user = {SERVICE!r}
        group = {SERVICE!r}
        companion_memory_check_interval = 0.2
        companion_workers = [{{"name": "hog", "target": "compapp:grower", "startsecs": 0,
                               "max_memory": "40MB"}}]
        """, env={"GROW_MB": "64"})
    # the manager (now the service user) reads the companion's memory and
    # recycles it: the companion stays readable to its own user after the drop
    srv.wait_log("max_memory exceeded")
    assert "max_memory is not enforced" not in srv.log()


@as_root
@pytest.mark.parametrize("with_setproctitle", [True, False],
                         ids=["setproctitle", "no-setproctitle"])
def test_companions_that_dropped_privileges_still_name_themselves(serve, users, sock_dir,
                                                                  with_setproctitle):
    """A companion of a manager dropped to Gunicorn's user, or run as a user
    of its own, is not dumpable: its /proc/self files belong to root, so it
    cannot write /proc/self/mem or /proc/self/comm. Its title and name must
    not depend on them."""
    sock_dir.chmod(0o755)
    sock = sock_dir / "c.sock"
    srv = serve(f"""
        preload_app = True
        workers = 1
        proc_name = "shop"
        user = {SERVICE!r}
        group = {SERVICE!r}
        companion_control_socket = {str(sock)!r}
        companion_workers = [
            {{"name": "who", "target": "compapp:sleeper", "startsecs": 0}},
            {{"name": "own", "target": "compapp:sleeper", "startsecs": 0, "user": {OTHER!r}}},
        ]
        """, start=False)
    if not with_setproctitle:
        hidden = srv.root / "hidden"
        hidden.mkdir(mode=0o755)
        (hidden / "setproctitle.py").write_text('raise ImportError("hidden for the test")\n')
        srv.env["PYTHONPATH"] = str(hidden)
    srv.start()
    srv.until(lambda: sock.exists() and all(
        c["state"] == "RUNNING" for c in Control(sock).request({"cmd": "status"})["companions"]),
        message="both RUNNING")
    def named(pid: int, name: str) -> bool:
        with open(f"/proc/{pid}/cmdline", "rb") as f, open(f"/proc/{pid}/comm") as g:
            return (f.read().rstrip(b"\0"), g.read()) == (
                f"gunicorn: companion {name} [shop]".encode(), f"{name}\n")

    # RUNNING at once (startsecs 0): the title follows within moments of the fork
    for companion in Control(sock).request({"cmd": "status"})["companions"]:
        srv.until(lambda c=companion: named(c["pid"], c["name"]),
                  message=f"{companion['name']} to title and name itself")
