"""Companions under every kind of Gunicorn deployment: worker classes, CLI flags,
--print-config, --help, and the embedding API."""

import subprocess
import sys
import textwrap

import gunicorn
import pytest
from support import SERVE, Server, children, cmdline, wait_until

GUNICORN_MAJOR = int(gunicorn.__version__.split(".")[0])
ASGI_WORKER = "asgi" if GUNICORN_MAJOR >= 25 else "uvicorn_worker.UvicornWorker"

WORKER_CLASSES = [
    ("sync", "compapp:app"),
    ("gthread", "compapp:app"),
    ("gevent", "compapp:app"),
    (ASGI_WORKER, "compapp:asgi_app"),
]


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
@pytest.mark.parametrize("worker_class,app", WORKER_CLASSES, ids=[w for w, _ in WORKER_CLASSES])
def test_companions_run_beside_every_worker_class(server, worker_class, app, preload):
    srv = server(f"""
        preload_app = {preload}
        workers = 2
        worker_class = {worker_class!r}
        # A worker still booting when SIGTERM comes can miss it (Gunicorn's own
        # race, companions or not): bound how long the master waits for it.
        graceful_timeout = 5
        companion_workers = [{{"name": "alpha", "target": "compapp:sleeper"}}]
    """, app=app)
    alpha, = srv.wait_starts("alpha")
    manager = srv.wait_manager()
    assert children(manager) == [alpha]
    wait_until(lambda: b"hello from" in srv.http_get(), message=srv.log())
    wait_until(lambda: len([p for p in children(srv.pid) if p != manager]) == 2,
               message=f"two HTTP workers beside the manager:\n{srv.log()}")
    srv.signal(15)
    assert srv.wait_exit() == 0
    assert not srv.tree()


def test_scalar_settings_have_command_line_flags_that_win_over_the_file(server):
    srv = server("""
        preload_app = True
        companion_restart_delay = 30
        companion_workers = [{"name": "crash", "target": "compapp:crasher"}]
    """, args=("--companion-restart-delay", "0.2", "--companion-startsecs", "0"))
    srv.wait_starts("crash", 2)
    srv.wait_log("exited unexpectedly with exit code 3; restarting in 0.2s")


def _print_config(tmp_path, config: str) -> tuple[str, dict[str, str]]:
    """--print-config's output, and its ``name = value`` lines as a dict."""
    srv = Server(tmp_path, config)
    out = subprocess.run([*srv.argv[:-1], "--print-config", "compapp:app"], cwd=tmp_path,
                         env=srv.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout, {line.split("=")[0].strip(): line.split("=", 1)[1].strip()
                        for line in out.stdout.splitlines() if "=" in line}


def test_print_config_shows_the_companion_settings(tmp_path):
    _, lines = _print_config(tmp_path, 'companion_workers = [{"name": "a", '
                                       '"target": "compapp:sleeper"}]\n'
                                       'companion_stop_timeout = 7\n')
    assert lines["companion_stop_timeout"] == "7"
    assert "'target': 'compapp:sleeper'" in lines["companion_workers"]


def test_check_config_validates_companion_targets(tmp_path):
    srv = Server(tmp_path, 'companion_workers = [{"name": "a", "target": "compapp:nope"}]\n')
    out = subprocess.run([*srv.argv[:-1], "--check-config", "compapp:app"], cwd=tmp_path,
                         env=srv.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "module 'compapp' has no attribute 'nope'" in out.stderr


def test_serve_help_lists_companion_settings_in_their_own_section():
    out = subprocess.run([*SERVE, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: gunicorn-companion serve")
    head, _, companions = out.stdout.partition("\nCompanions:\n")
    assert "--companion-stop-timeout" in companions and "--companion-stop-timeout" not in head
    assert "--workers" in head


def test_embedding_api_runs_companions(tmp_path):
    script = tmp_path / "embedded.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        sys.path.insert(0, os.path.dirname(__file__))
        from gunicorn_companion import CompanionApplication
        import compapp

        class App(CompanionApplication):
            def load_config(self):
                self.cfg.set("bind", sys.argv[1])
                self.cfg.set("workers", 1)
                self.cfg.set("preload_app", True)
                self.cfg.set("companion_workers",
                             [{"name": "embedded", "target": "compapp:sleeper"}])

            def load(self):
                return compapp.app

        App().run()
    """))
    srv = Server(tmp_path, "")
    srv.argv = [sys.executable, str(script), f"127.0.0.1:{srv.port}"]
    srv.start()
    try:
        pid, = srv.wait_starts("embedded")
        assert "companion embedded [" in cmdline(pid)
        wait_until(lambda: b"hello from the web" in srv.http_get(), message=srv.log())
        srv.signal(15)
        assert srv.wait_exit() == 0
    finally:
        srv.cleanup()


def test_a_relative_config_path_with_chdir_is_found_again_on_reload(tmp_path):
    srv = Server(tmp_path, 'companion_workers = [{"name": "a", "target": "compapp:sleeper"}]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -c is relative to where Gunicorn starts; --chdir moves it away from there
    srv.argv = [*SERVE, "-c", "gunicorn.conf.py", "--chdir", str(elsewhere),
                "--pythonpath", str(tmp_path), "--bind", f"127.0.0.1:{srv.port}", "compapp:app"]
    srv.start()
    try:
        srv.wait_starts("a")
        srv.signal(1)  # SIGHUP: the manager reads the same file again
        srv.wait_log("Companion config reread: no changes")
    finally:
        srv.cleanup()


def test_print_config_shows_values_as_written_and_derived_ones_with_their_derivation(
        tmp_path):
    out, lines = _print_config(
        tmp_path, 'companion_workers = [{"name": "a", "target": "compapp:sleeper", '
                  '"stop_timeout": 30}, {"name": "b", "target": "compapp:sleeper"}]\n'
                  'companion_control_socket_mode = 0o660\n')
    assert lines["companion_control_socket_mode"] == "0o660"
    assert ("  companion_manager_stop_timeout = 35 (derived: the slowest stop_timeout, 30 "
            "for 'a', + companion_manager_shutdown_buffer 5)") in out.splitlines()


def test_a_config_builds_its_argument_parser_once_and_it_parses_alike_each_time():
    """Each SIGHUP makes a new Config and asks it for the parser twice; building
    it was most of the time companions added to Gunicorn's reload."""
    from gunicorn_companion.app import ServeConfig

    cfg = ServeConfig("usage", prog="gunicorn-companion serve")
    parser = cfg.parser()
    assert cfg.parser() is parser
    argv = ["-w", "3", "--companion-startsecs", "2", "app:application"]
    first, again = parser.parse_args(argv), parser.parse_args(argv)
    assert vars(first) == vars(again)
    assert first.workers == 3 and first.args == ["app:application"]
    assert vars(parser.parse_args([])) == vars(ServeConfig("usage").parser().parse_args([]))
