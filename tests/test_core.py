"""The core lifecycle against real Gunicorn masters, forks and signals."""

import json
import os
import signal
import time

import pytest
from support import alive, children, cmdline, smaps_rollup, wait_until

SLEEPERS = """
preload_app = True
workers = 1
companion_workers = [
    {"name": "alpha", "target": "compapp:sleeper"},
    {"name": "beta", "target": "compapp:sleeper", "startsecs": 0},
]
"""


def test_boot_forks_one_manager_that_forks_each_companion(server):
    srv = server(SLEEPERS)
    manager = srv.wait_manager()
    alpha, = srv.wait_starts("alpha")
    beta, = srv.wait_starts("beta")
    # the tree: master -> manager -> companions; HTTP workers beside the manager
    assert sorted(children(manager)) == sorted([alpha, beta])
    assert manager in children(srv.pid)
    assert "companion alpha [" in cmdline(alpha)
    srv.wait_log(f"companion 'alpha' (pid {alpha}) is RUNNING")
    assert b"hello from the web" in srv.http_get()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    assert not srv.tree()


def test_companion_that_exits_is_restarted_after_restart_delay(server):
    srv = server("""
        preload_app = True
        companion_workers = [{"name": "crash", "target": "compapp:crasher",
                              "restart_delay": 0.3, "startsecs": 0}]
    """)
    first, second = srv.wait_starts("crash", 2)
    assert first != second
    srv.wait_log(f"companion 'crash' (pid {first}) exited unexpectedly with exit code 3; "
                 "restarting in 0.3s")


def test_companion_killed_with_sigkill_is_restarted(server):
    srv = server(SLEEPERS)
    alpha, = srv.wait_starts("alpha")
    manager = srv.wait_manager()
    os.kill(alpha, signal.SIGKILL)
    _, again = srv.wait_starts("alpha", 2)
    srv.wait_log(f"companion 'alpha' (pid {alpha}) exited unexpectedly with signal SIGKILL")
    assert again in children(manager) and not alive(alpha)
    assert srv.manager_pid() == manager  # the manager itself was not disturbed


def test_cwd_env_and_output_files(server, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    srv = server(f"""
        preload_app = True
        companion_stdout = {str(tmp_path / "all.out")!r}
        companion_workers = [
            {{"name": "split", "target": "compapp:reporter", "cwd": {str(workdir)!r},
              "env": {{"FOO": "bar"}}, "stdout": "split.out", "stderr": "split.err"}},
            {{"name": "merged", "target": "compapp:reporter", "stderr": "stdout"}},
            {{"name": "inherited", "target": "compapp:reporter", "stdout": "inherit"}},
        ]
    """)
    for name in ("split", "merged", "inherited"):
        srv.wait_starts(name)
    split_out = workdir / "split.out"  # relative paths are taken from the companion's cwd
    wait_until(lambda: (workdir / "split.err").exists() and split_out.exists()
               and "out from split" in split_out.read_text()
               and "err from split" in (workdir / "split.err").read_text())
    merged = tmp_path / "all.out"  # the global default applies to companions without stdout
    wait_until(lambda: merged.exists() and "err from merged" in merged.read_text()
               and "out from merged" in merged.read_text())
    srv.wait_log("out from inherited")
    srv.wait_log("err from inherited")
    info = json.loads((srv.state / "split.json").read_text())
    assert info["cwd"] == str(workdir)
    assert info["env"]["FOO"] == "bar"
    assert info["env"]["GUNICORN_COMPANION_NAME"] == "split"
    assert info["env"]["COMPANION_STATE"] == str(srv.state)  # the rest is inherited
    assert info["pgid"] == info["pid"]  # leads its own process group
    # the master's listening socket is not inherited
    listening = {s for s in _inodes_of_listening_port(srv.port)}
    fds = {os.readlink(f"/proc/{info['pid']}/fd/{fd}") for fd in info["fds"]
           if os.path.exists(f"/proc/{info['pid']}/fd/{fd}")}
    assert not listening & fds


def _inodes_of_listening_port(port):
    inodes = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                inodes.append(f"socket:[{fields[9]}]")
    return inodes


def test_output_appends_across_restarts(server, tmp_path):
    out = tmp_path / "crash.out"
    out.write_text("kept\n")
    srv = server(f"""
        preload_app = True
        companion_workers = [{{"name": "crash", "target": "compapp:crasher",
                               "stdout": {str(out)!r}, "restart_delay": 0.1}}]
    """)
    srv.wait_starts("crash", 2)
    assert out.read_text().startswith("kept\n")


def test_companion_config_file(server, tmp_path):
    companions = tmp_path / "companions.py"
    companions.write_text(
        'companion_startsecs = 0\n'
        'companion_workers = [{"name": "fromfile", "target": "compapp:sleeper"}]\n')
    srv = server(f"""
        preload_app = True
        companion_config_file = {str(companions)!r}
        # ignored: the companion config file replaces these
        companion_workers = [{{"name": "frommain", "target": "compapp:sleeper"}}]
    """)
    pid, = srv.wait_starts("fromfile")
    srv.wait_log(f"companion 'fromfile' (pid {pid}) started")
    assert srv.starts("frommain") == []


def test_sighup_with_unchanged_config_leaves_companions_alone(server):
    srv = server(SLEEPERS)
    manager = srv.wait_manager()
    alpha, = srv.wait_starts("alpha")
    srv.signal(signal.SIGHUP)
    srv.wait_log("Companion config reread: no changes")
    assert srv.manager_pid() == manager
    assert srv.starts("alpha") == [alpha] and alive(alpha)


def test_sighup_with_changed_config_restarts_only_what_changed(server):
    srv = server(SLEEPERS)
    manager = srv.wait_manager()
    alpha, = srv.wait_starts("alpha")
    beta, = srv.wait_starts("beta")
    srv.write_config("""
        preload_app = True
        workers = 1
        companion_workers = [
            {"name": "alpha", "target": "compapp:sleeper"},
            {"name": "beta", "target": "compapp:sleeper", "startsecs": 0, "env": {"X": "1"}},
            {"name": "gamma", "target": "compapp:sleeper"},
        ]
    """)
    srv.signal(signal.SIGHUP)
    srv.wait_starts("gamma")
    _, new_beta = srv.wait_starts("beta", 2)
    srv.wait_log("Companion config reread: added: gamma, changed: beta")
    assert not alive(beta) and alive(new_beta)
    assert srv.starts("alpha") == [alpha] and alive(alpha)
    assert srv.manager_pid() == manager

    srv.write_config("""
        preload_app = True
        workers = 1
        companion_workers = [{"name": "alpha", "target": "compapp:sleeper"}]
    """)
    srv.signal(signal.SIGHUP)
    srv.wait_log("removed: beta, gamma")
    wait_until(lambda: not srv.running_as("beta") and not srv.running_as("gamma"))
    assert alive(alpha)


def test_sighup_with_invalid_config_keeps_the_running_one(server):
    srv = server(SLEEPERS)
    alpha, = srv.wait_starts("alpha")
    srv.write_config(SLEEPERS.replace('"startsecs": 0', '"startsecs": -1'))
    srv.signal(signal.SIGHUP)
    srv.wait_log("Companion config not applied, keeping the running one")
    srv.wait_log("companion 'beta': startsecs must be a non-negative number of seconds")
    assert srv.starts("alpha") == [alpha] and alive(alpha)
    assert srv.proc.poll() is None


def test_sigterm_kills_a_companion_that_ignores_it_after_stop_timeout(server):
    srv = server("""
        preload_app = True
        companion_workers = [
            {"name": "stubborn", "target": "compapp:stubborn", "stop_timeout": 1},
            {"name": "polite", "target": "compapp:sleeper"},
        ]
    """)
    stubborn, = srv.wait_starts("stubborn")
    polite, = srv.wait_starts("polite")
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    elapsed = time.monotonic() - started
    log = srv.log()
    assert f"companion 'polite' (pid {polite}) stopped (signal SIGTERM)" in log
    assert f"companion 'stubborn' (pid {stubborn}) did not exit in time after SIGTERM" in log
    assert f"companion 'stubborn' (pid {stubborn}) stopped (signal SIGKILL)" in log
    assert elapsed >= 1.0  # it was given its stop_timeout
    assert not srv.tree()


def test_manager_that_overruns_its_stop_timeout_is_killed_with_its_companions(server):
    srv = server("""
        preload_app = True
        companion_manager_stop_timeout = 0.5
        companion_workers = [{"name": "stubborn", "target": "compapp:stubborn",
                              "stop_timeout": 60}]
    """)
    stubborn, = srv.wait_starts("stubborn")
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(timeout=20) == 0
    assert "Companion manager did not stop in 0.5s; killing it" in srv.log()
    wait_until(lambda: not alive(stubborn), 5, message="the companion to die")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_quick_shutdown_does_not_wait_for_stop_timeout(server, sig):
    srv = server("""
        preload_app = True
        companion_workers = [{"name": "stubborn", "target": "compapp:stubborn",
                              "stop_timeout": 60}]
    """)
    stubborn, = srv.wait_starts("stubborn")
    srv.signal(sig)
    srv.wait_exit(timeout=20)
    assert "Companion manager stopping companions (quick)" in srv.log()
    assert not alive(stubborn)


def test_sigkill_of_the_master_takes_manager_and_companions(server):
    srv = server(SLEEPERS)
    manager = srv.wait_manager()
    pids = srv.wait_starts("alpha") + srv.wait_starts("beta")
    srv.signal(signal.SIGKILL)
    srv.wait_exit()
    wait_until(lambda: not any(alive(p) for p in [manager, *pids]), 5,
               message="manager and companions to die with the master")


def test_sigkill_of_the_manager_restarts_it_without_ever_running_two(server):
    srv = server(SLEEPERS)
    manager = srv.wait_manager()
    alpha, = srv.wait_starts("alpha")
    os.kill(manager, signal.SIGKILL)
    # Sample while the replacement comes up: one alpha at most, ever.
    most = 0
    deadline = time.monotonic() + 30
    while len(srv.starts("alpha")) < 2 or not srv.running_as("alpha"):
        most = max(most, len(srv.running_as("alpha")))
        assert time.monotonic() < deadline, srv.log()
    most = max(most, len(srv.running_as("alpha")))
    assert most == 1
    assert not alive(alpha)
    new_manager = srv.wait_manager(other_than=manager)
    assert srv.starts("alpha")[-1] in children(new_manager)
    srv.wait_log("Companion manager exited by signal SIGKILL")
    assert srv.proc.poll() is None


def _open_files(pid: int) -> dict[int, str]:
    """fd -> what it refers to, for a live process."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed while listed
            pass
    return found


def test_a_replacement_manager_holds_no_file_of_the_http_workers(server):
    # Found by the chaos soak: the master holds a heartbeat file per HTTP
    # worker, and a manager forked after the workers (a replacement) kept them
    # open, so its own fds numbered higher: the notify fd a companion gets
    # passed 9, which `>&$GUNICORN_COMPANION_NOTIFY_FD` in dash cannot name.
    srv = server("""
        preload_app = True
        workers = 3
        companion_workers = [{"name": "rep", "target": "compapp:reporter"}]
    """)
    first = srv.wait_manager()
    srv.wait_starts("rep")

    def reported():
        try:
            return json.loads((srv.state / "rep.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or half
            return None

    first_fd = srv.until(reported)["env"]["GUNICORN_COMPANION_NOTIFY_FD"]
    os.kill(first, signal.SIGKILL)
    second = srv.wait_manager(other_than=first)
    _, again = srv.wait_starts("rep", 2)
    report = srv.until(lambda: (r := reported()) and r["pid"] == again and r,
                       message="the new companion's report")
    master_files = {path for path in _open_files(srv.pid).values() if path.startswith("/")}
    held = {fd: path for fd, path in _open_files(second).items()
            if fd > 2 and path in master_files}  # stdio is shared on purpose
    assert held == {}
    assert int(report["env"]["GUNICORN_COMPANION_NOTIFY_FD"]) <= int(first_fd)


def test_companions_share_the_preloaded_memory(server):
    srv = server("""
        preload_app = True
        companion_workers = [{"name": "reader", "target": "compapp:big_reader"}]
    """, env={"COMPAPP_BIG_MB": "64"})
    pid, = srv.wait_starts("reader")
    mem = smaps_rollup(pid)
    big_kb = 64 * 1024
    assert mem["Rss"] >= big_kb, mem  # the structure is mapped in the companion...
    private = mem["Private_Clean"] + mem["Private_Dirty"]
    assert private < big_kb / 4, mem  # ...but not copied into it


def test_without_preload_companions_still_run_and_the_log_says_so_once(server):
    srv = server("""
        workers = 2
        companion_workers = [{"name": "alpha", "target": "compapp:sleeper"}]
    """)
    srv.wait_starts("alpha")
    assert b"hello from the web" in srv.http_get()
    assert srv.log().count("memory is not shared") == 1


def test_usr2_without_companions_reexecutes_the_serve_command(server):
    # A companion-only flag on the command line: plain `gunicorn` would refuse
    # it, so a new master that boots proves the re-exec ran `serve` again.
    srv = server("workers = 1\n", args=("--companion-stop-timeout", "5"))
    srv.wait_log("Booting worker")  # the master handles signals from here on
    srv.signal(signal.SIGUSR2)
    new_master = srv.until(
        lambda: next((p for p in children(srv.pid) if "master" in cmdline(p)), None),
        message="a new master")
    srv.until(lambda: children(new_master), message="the new master's worker")
    srv.wait_log(f"Listening at: http://127.0.0.1:{srv.port} ({new_master})")
    os.kill(new_master, signal.SIGTERM)
    wait_until(lambda: not alive(new_master))


def test_companions_added_by_sighup_to_a_server_that_had_none_start(server):
    srv = server("preload_app = True\nworkers = 1\n")
    srv.wait_log("Booting worker")
    srv.write_config("""
        preload_app = True
        workers = 1
        companion_workers = [{"name": "late", "target": "compapp:sleeper"}]
    """)
    srv.signal(signal.SIGHUP)
    pid, = srv.wait_starts("late")
    srv.wait_log(f"companion 'late' (pid {pid}) is RUNNING")


def test_sighup_with_a_broken_config_file_keeps_everything_running(server):
    srv = server(SLEEPERS)
    manager = srv.wait_manager()
    alpha, = srv.wait_starts("alpha")
    srv.write_config("preload_app = True\ncompanion_workers = [\n")  # a syntax error
    srv.signal(signal.SIGHUP)
    srv.wait_log("Reload failed: the configuration is invalid")
    assert "SyntaxError" in srv.log()
    assert srv.proc.poll() is None and srv.manager_pid() == manager and alive(alpha)
    assert b"hello from the web" in srv.http_get()
    srv.write_config(SLEEPERS)  # fixed: the next reload works as usual
    srv.signal(signal.SIGHUP)
    srv.wait_log("Companion config reread: no changes")
    assert alive(alpha)
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(timeout=10) == 0
    # only the master ever handled the failed reload: an HTTP worker forked by
    # a later reload must exit as a worker, not fall back into master code
    assert srv.log().count("Reload failed") == 1
    assert f"[{srv.pid}] [ERROR] Reload failed" in srv.log()


def test_a_refused_reload_leaves_the_companions_alone_too(server):
    srv = server(SLEEPERS)
    alpha, = srv.wait_starts("alpha")
    # a bad Gunicorn setting beside a companion change: the whole reload is refused
    srv.write_config(SLEEPERS.replace("workers = 1", 'workers = "many"').replace(
        '"target": "compapp:sleeper"}', '"target": "compapp:sleeper", "env": {"X": "1"}}', 1))
    srv.signal(signal.SIGHUP)
    srv.wait_log("Reload failed: the configuration is invalid")
    srv.signal(signal.SIGHUP)  # the next one too: nothing was half-applied
    srv.wait_log("Reload failed: the configuration is invalid", count=2)
    assert "Companion config reread" not in srv.log()
    assert srv.starts("alpha") == [alpha] and alive(alpha)


def test_a_replacement_manager_runs_the_target_the_config_names_now(server):
    srv = server(SLEEPERS)
    manager = srv.wait_manager()
    srv.wait_starts("alpha")
    srv.write_config(SLEEPERS.replace('"name": "alpha", "target": "compapp:sleeper"',
                                      '"name": "alpha", "target": "compapp:instance"'))
    srv.signal(signal.SIGHUP)
    srv.wait_starts("alpha", 2)
    os.kill(manager, signal.SIGKILL)
    srv.wait_manager(other_than=manager)
    srv.wait_starts("alpha", 3)
    # compapp:instance notes each start; compapp:sleeper does not
    lines = srv.until(lambda: (srv.state / "alpha.instances").exists()
                      and (srv.state / "alpha.instances").read_text().splitlines(),
                      message="alpha's instance notes")
    srv.until(lambda: len((srv.state / "alpha.instances").read_text().splitlines()) >= 2,
              message="the replacement to run compapp:instance too")
    assert lines


def test_ctrl_c_during_a_graceful_stop_hurries_the_companions(server):
    srv = server("""
        preload_app = True
        companion_workers = [{"name": "stubborn", "target": "compapp:stubborn",
                              "stop_timeout": 60}]
    """)
    stubborn, = srv.wait_starts("stubborn")
    srv.signal(signal.SIGTERM)
    srv.wait_log("Companion manager stopping companions (graceful)")
    srv.signal(signal.SIGINT)
    # Waiting out the 60 s stop_timeout would fail this deadline, which is
    # generous enough for a loaded machine: no tighter wall-clock bound needed.
    srv.wait_exit(timeout=30)
    assert not alive(stubborn)


def test_a_slow_replacement_manager_does_not_hold_up_the_http_workers(server):
    srv = server("""
        workers = 1
        companion_workers = [{"name": "slow", "target": "slowimport:run"}]
    """)
    (srv.root / "slowimport.py").write_text(
        "import os, time\n"
        "if os.path.exists(os.path.join(os.path.dirname(__file__), 'slow')):\n"
        "    time.sleep(4)  # a heavy import, paid in the manager without preload\n"
        "from compapp import sleeper as run\n")
    srv.wait_starts("slow")
    manager = srv.wait_manager()
    (srv.root / "slow").touch()
    os.kill(manager, signal.SIGKILL)
    srv.wait_manager(other_than=manager)  # forked, still importing
    worker = next(p for p in children(srv.pid) if "worker" in cmdline(p))
    os.kill(worker, signal.SIGKILL)
    # the master replaces its HTTP worker while the new manager is still booting
    srv.wait_log("Booting worker", count=2, timeout=3)
    assert srv.log().count("Companion manager booted") == 1
    srv.wait_log("Companion manager booted", count=2)
    srv.wait_starts("slow", 2)
