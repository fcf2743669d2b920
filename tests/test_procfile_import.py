"""import-procfile: table tests of the pure conversion, then the result
checked by `serve --check-config` and run for real."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import wait_until

from gunicorn_companion import procfile_import as pi

SERVE = [sys.executable, "-m", "gunicorn_companion"]


@pytest.mark.parametrize(
    ("command", "rest", "redirects"),
    [
        ("bench worker 1>> logs/worker.log 2>> logs/worker.error.log", "bench worker",
         [("stdout", "logs/worker.log", ">>"), ("stderr", "logs/worker.error.log", ">>")]),
        ("rq worker >out.log 2>&1", "rq worker",
         [("stdout", "out.log", ">"), ("stderr", "stdout", ">")]),
        ("celery beat &> beat.log", "celery beat",
         [("stdout", "beat.log", ">"), ("stderr", "stdout", ">")]),
        ("node a=>b.js", "node a=>b.js", []),  # not at a word's start: an argument
        ("plain --flag", "plain --flag", []),
    ],
)
def test_take_redirections(command, rest, redirects):
    assert pi.take_redirections(command)[:2] == (rest, redirects)


@pytest.mark.parametrize(
    ("text", "argv"),
    [
        ("bench worker --queue short", ["bench", "worker", "--queue", "short"]),
        ("node 'my app.js'", ["node", "my app.js"]),  # quotes alone need no shell
        ("rq worker $QUEUE", ["/bin/sh", "-c", "exec rq worker $QUEUE"]),
        ("A=${A:-1} B=2 bench worker", ["/bin/sh", "-c", "A=${A:-1} B=2 exec bench worker"]),
        ("migrate && serve", ["/bin/sh", "-c", "migrate && serve"]),
    ],
)
def test_command_for(text, argv):
    assert pi.command_for(text) == argv


def test_parse_procfile_notes_what_it_leaves_out():
    processes, notes = pi.parse_procfile(
        "# comment\n\nweb: bench serve\nworker:bench worker\nnot a process\nworker: again\n")
    assert [(p.name, p.command, p.line) for p in processes] == [
        ("web", "bench serve", 3), ("worker", "bench worker", 4)]
    assert notes == ["line 5 is not 'name: command', left out: not a process",
                     "line 6: 'worker' again, left out (honcho runs the first)"]


def test_parse_env():
    values, notes = pi.parse_env('A=1\nexport B="two words"\nC=\'x\'\n# no\nnonsense\n')
    assert values == {"A": "1", "B": "two words", "C": "x"}
    assert notes == [".env line 5 is not KEY=VALUE, left out: nonsense"]


def test_convert_leaves_web_out_and_a_compound_command_to_the_shell():
    text = pi.convert("web: bench serve\nrelease: migrate && echo ok > r.log\n", None, "Procfile")
    assert "# web (line 1) left out: Gunicorn is the web server: bench serve" in text
    namespace: dict = {}
    exec(text, namespace)
    assert namespace["companion_workers"] == [
        {"name": "release", "command": ["/bin/sh", "-c", "migrate && echo ok > r.log"]}]


FRAPPE_LIKE = """\
web: bench serve --port 8000
worker: QUEUE_NAME=${QUEUE_NAME:-default} ./bench worker 1>> logs/worker.log \
2>> logs/worker.error.log
schedule: ./bench schedule
"""

FAKE_BENCH = """\
#!/bin/sh
trap 'exit 0' TERM
echo "bench $1 queue=$QUEUE_NAME greeting=$GREETING"
echo "bench $1 to stderr" >&2
while :; do sleep 0.1; done
"""


@pytest.fixture
def bench_dir(tmp_path):
    (tmp_path / "logs").mkdir()
    bench = tmp_path / "bench"
    bench.write_text(FAKE_BENCH)
    bench.chmod(0o755)
    (tmp_path / "Procfile").write_text(FRAPPE_LIKE)
    (tmp_path / ".env").write_text('GREETING="hello there"\n')
    (tmp_path / "app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n    return [b'ok']\n")
    result = subprocess.run([*SERVE, "import-procfile"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    (tmp_path / "gunicorn.conf.py").write_text(
        result.stdout + "workers = 1\nbind = '127.0.0.1:0'\n")
    return tmp_path


def test_the_result_passes_check_config(bench_dir):
    result = subprocess.run([*SERVE, "serve", "--check-config", "app:app"], cwd=bench_dir,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_result_runs_as_honcho_ran_it(bench_dir):
    proc = subprocess.Popen([*SERVE, "serve", "app:app"], cwd=bench_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out = bench_dir / "logs" / "worker.log"
        err = bench_dir / "logs" / "worker.error.log"
        wait_until(lambda: out.exists() and "greeting" in out.read_text(), message="worker.log")
        # $VAR expanded by the shell from the .env values and its own default
        assert out.read_text() == "bench worker queue=default greeting=hello there\n"
        wait_until(lambda: err.exists() and err.read_text() == "bench worker to stderr\n",
                   message="worker.error.log")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)


def test_missing_procfile_is_named(tmp_path, capsys):
    assert pi.main([str(tmp_path / "Procfile")]) == 2
    assert f"cannot read {tmp_path}/Procfile: No such file or directory" in capsys.readouterr().err
