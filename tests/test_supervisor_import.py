"""Table tests for supervisor_import.py: supervisord.conf -> companion_workers.

Every conversion in this file goes through ``converted()``, which checks the
invariant the command promises: the output parses, exec'd gives a list of
dicts in the fixed order, and the companion config accepts every one of them
(nothing is filtered out first, so a value the importer writes and the spec
refuses shows at once).
"""

from __future__ import annotations

import ast
import os
import pwd
import signal
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gunicorn_companion import supervisor_import as si
from gunicorn_companion.spec import KNOWN_KEYS, ConfigError, parse_companions
from gunicorn_companion.supervisor_import import (
    OUTPUT_KEYS,
    SupervisorConfigError,
    convert,
    main,
    parse_bool,
    parse_environment,
    sanitize_name,
)

DATA = Path(__file__).parent / "data" / "supervisor"

# user= names an account of the machine the config came from: the spec looks
# it up, so the check below puts one that exists here in its place.
HERE = pwd.getpwuid(os.getuid()).pw_name


# -- helpers -----------------------------------------------------------------------


def load(text: str) -> list[dict]:
    """The invariant: valid Python giving a list of dicts, keys in order, that
    the companion config accepts as they are."""
    tree = ast.parse(text)
    assert [type(node) for node in tree.body] == [ast.Assign]
    namespace: dict = {}
    exec(compile(tree, "<converted>", "exec"), {}, namespace)
    assert set(namespace) == {"companion_workers"}
    workers = namespace["companion_workers"]
    assert isinstance(workers, list)
    for worker in workers:
        assert isinstance(worker, dict)
        assert list(worker) == [k for k in OUTPUT_KEYS if k in worker]
        assert isinstance(worker["name"], str)
    accepted(workers)
    return workers


def accepted(workers: list[dict]):
    """parse_companions of the output as written, but for user= (see HERE) and
    a command the importer could not write (a note asks for one)."""
    stand_ins = {"user": HERE, "command": ["/bin/true"]}
    try:
        return parse_companions([
            {**w, **{k: v for k, v in stand_ins.items() if k in w or k == "command"}}
            if "user" in w or "command" not in w else w
            for w in workers
        ])
    except ConfigError as exc:
        raise AssertionError(f"the importer wrote what the spec refuses: {exc}") from None


def test_every_output_key_is_a_companion_key():
    assert set(OUTPUT_KEYS) <= set(KNOWN_KEYS)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def converted(path: Path | str, environ=None) -> tuple[str, list[dict]]:
    text = convert(str(path), environ={} if environ is None else environ)
    return text, load(text)


def program(tmp_path: Path, body: str, environ=None, name: str = "p") -> tuple[dict, list[str]]:
    """Convert one ``[program:NAME]`` with ``body``: (its dict, its comment lines)."""
    conf = write(tmp_path / "supervisord.conf", f"[program:{name}]\n{body}\n")
    text, workers = converted(conf, environ)
    assert len(workers) == 1
    return workers[0], notes_for(text, name)


def notes_for(text: str, program_name: str) -> list[str]:
    """The comments written above the dict of ``[program:NAME]``."""
    lines = text.splitlines()
    start = lines.index(f"    # [program:{program_name}] from " + _origin(lines, program_name))
    notes = []
    for line in lines[start + 1:]:
        if line == "    {":
            return notes
        assert line.startswith("    # "), line
        notes.append(line[len("    # "):])
    raise AssertionError("no dict after the comments")


def _origin(lines: list[str], program_name: str) -> str:
    prefix = f"    # [program:{program_name}] from "
    return next(line[len(prefix):] for line in lines if line.startswith(prefix))


def top_notes(text: str) -> list[str]:
    lines = text.splitlines()
    end = lines.index("companion_workers = [")
    assert all(line.startswith("#") for line in lines[:end])
    return [line[2:] for line in lines[:end]]


def has_note(notes: list[str], *fragments: str) -> bool:
    return any(all(f in note for f in fragments) for note in notes)


# -- each supervisord key to its companion key ------------------------------------------

MAPPING = [
    # (program body, companion key, expected value)
    ("command=/usr/bin/rq worker", "command", ["/usr/bin/rq", "worker"]),
    ('command=/bin/prog -p "foo bar" \'x y\'', "command", ["/bin/prog", "-p", "foo bar", "x y"]),
    ("command=sh -c 'echo $HOME; sleep 1'", "command", ["sh", "-c", "echo $HOME; sleep 1"]),
    (r'command=/bin/echo a\ b "c\"d"', "command", ["/bin/echo", "a b", 'c"d']),
    ("command=/bin/echo a;b", "command", ["/bin/echo", "a;b"]),  # ';' needs a space before
    ("command=/bin/echo hi ; a comment", "command", ["/bin/echo", "hi"]),
    ("command=/bin/echo hi # a comment", "command", ["/bin/echo", "hi"]),
    ("command=/bin/echo a#b", "command", ["/bin/echo", "a#b"]),
    ("command=/bin/echo\n  continued line", "command", ["/bin/echo", "continued", "line"]),
    ("COMMAND=/bin/upper", "command", ["/bin/upper"]),  # keys are case-insensitive
    ("command = /bin/spaced ", "command", ["/bin/spaced"]),
    ("directory=/srv/app", "cwd", "/srv/app"),
    ('environment=A="1",B=two', "env", {"A": "1", "B": "two"}),
    ("environment=\n  A=1,\n  B=2", "env", {"A": "1", "B": "2"}),
    ('environment=URI="/first%%20name"', "env", {"URI": "/first%20name"}),
    ("stopsignal=TERM", "stop_signal", "SIGTERM"),
    ("stopsignal=QUIT", "stop_signal", "SIGQUIT"),
    ("stopsignal=int", "stop_signal", "SIGINT"),
    ("stopsignal=SIGUSR1", "stop_signal", "SIGUSR1"),
    ("StopSignal=HUP", "stop_signal", "SIGHUP"),
    ("stopsignal=9", "stop_signal", "SIGKILL"),
    ("stopwaitsecs=30", "stop_timeout", 30),
    ("stopwaitsecs=2.5", "stop_timeout", 2.5),
    ("stopasgroup=true", "stop_as_group", True),
    ("stopasgroup=true\nkillasgroup=true", "stop_as_group", True),
    ("startsecs=0", "startsecs", 0),
    ("startsecs=10", "startsecs", 10),
    ("startretries=3", "startretries", 3),
    ("startretries=0", "startretries", 0),
    ("numprocs=4\nprocess_name=%(program_name)s_%(process_num)02d", "processes", 4),
    ("autostart=true", "autostart", True),
    ("autostart=false", "autostart", False),
    ("autostart=Yes", "autostart", True),
    ("autostart=no", "autostart", False),
    ("autostart=1", "autostart", True),
    ("autostart=0", "autostart", False),
    ("autostart=on", "autostart", True),
    ("autostart=OFF", "autostart", False),
    ("stdout_logfile=/var/log/p.log", "stdout", "/var/log/p.log"),
    ("stderr_logfile=/var/log/p.err", "stderr", "/var/log/p.err"),
    ("redirect_stderr=true", "stderr", "stdout"),
    ("redirect_stderr=true\nstdout_logfile=/var/log/p.log", "stderr", "stdout"),
    ("stdout_logfile=/l\nstdout_logfile_maxbytes=50MB", "stdout_maxbytes", 50 * 1024 * 1024),
    ("stdout_logfile=/l\nstdout_logfile_maxbytes=1KB", "stdout_maxbytes", 1024),
    ("stdout_logfile=/l\nstdout_logfile_maxbytes=2gb", "stdout_maxbytes", 2 * 1024**3),
    ("stdout_logfile=/l\nstdout_logfile_maxbytes=12345", "stdout_maxbytes", 12345),
    ("stdout_logfile=/l\nstdout_logfile_maxbytes=0", "stdout_maxbytes", 0),
    ("stdout_logfile=/l\nstdout_logfile_backups=7", "stdout_backups", 7),
    ("stderr_logfile=/e\nstderr_logfile_maxbytes=10MB", "stderr_maxbytes", 10 * 1024**2),
    ("stderr_logfile=/e\nstderr_logfile_backups=0", "stderr_backups", 0),
]


@pytest.mark.parametrize(("body", "key", "expected"), MAPPING)
def test_mapping(tmp_path, body, key, expected):
    worker, _ = program(tmp_path, "command=/bin/true\n" + body if key != "command" else body)
    assert worker[key] == expected
    assert type(worker[key]) is type(expected)
    assert worker["name"] == "p"


def test_a_plain_program_gets_only_name_and_command(tmp_path):
    worker, notes = program(tmp_path, "command=/bin/cat")
    assert worker == {"name": "p", "command": ["/bin/cat"]}
    assert notes == []


def test_numprocs_of_one_gives_no_processes_key(tmp_path):
    worker, _ = program(tmp_path, "command=/bin/cat\nnumprocs=1")
    assert "processes" not in worker


@pytest.mark.parametrize(
    ("body", "absent", "note"),
    [
        ("stdout_logfile=NONE", "stdout", "no equivalent yet"),
        ("stdout_logfile=none", "stdout", "no equivalent yet"),
        ("stdout_logfile=/dev/null", "stdout", "no equivalent yet"),
        ("stdout_logfile=AUTO", "stdout", "AUTO"),
        ("stderr_logfile=NONE", "stderr", "no equivalent yet"),
        ("stderr_logfile=/dev/null", "stderr", "no equivalent yet"),
        ("stderr_logfile=AUTO", "stderr", "AUTO"),
        ("stdout_logfile=syslog", "stdout", "syslog"),
        ("stdout_logfile_maxbytes=1MB", "stdout_maxbytes", "no stdout file"),
        ("stderr_logfile=NONE\nstderr_logfile_backups=3", "stderr_backups", "no stderr file"),
        ("stopsignal=BOGUS", "stop_signal", "not a signal name"),
        ("stopsignal=999", "stop_signal", "not a signal number"),
        ("stopwaitsecs=soon", "stop_timeout", "must be a number of seconds"),
        ("stopwaitsecs=-1", "stop_timeout", "must be a non-negative number of seconds"),
        ("startsecs=nan", "startsecs", "must be a non-negative number of seconds"),
        ("startretries=-1", "startretries", "not a whole number"),
        ("startretries=3.5", "startretries", "not a whole number"),
        ("autostart=maybe", "autostart", "not a boolean"),
        ("numprocs=many", "processes", "not a whole number"),
        ("numprocs=0", "processes", "numprocs=0"),
        ("stdout_logfile=/l\nstdout_logfile_maxbytes=50X", "stdout_maxbytes", "must be 0"),
        ("directory=", "cwd", "directory= is empty"),
        ('environment=A="open', "env", "no closing quotation"),
        ("environment=JUSTAWORD", "env", "expected KEY=VALUE"),
    ],
)
def test_values_without_an_equivalent_are_left_out_with_a_note(tmp_path, body, absent, note):
    worker, notes = program(tmp_path, "command=/bin/true\n" + body)
    assert absent not in worker
    assert has_note(notes, note), notes


def test_redirect_stderr_ignores_stderr_logfile_with_a_note(tmp_path):
    worker, notes = program(
        tmp_path,
        "command=/bin/true\nredirect_stderr=yes\nstdout_logfile=/o\n"
        "stderr_logfile=/e\nstderr_logfile_maxbytes=1MB",
    )
    assert worker["stderr"] == "stdout"
    assert "stderr_maxbytes" not in worker
    assert has_note(notes, "stderr_logfile=/e", "redirect_stderr")
    assert has_note(notes, "stderr_logfile_maxbytes=1MB", "redirect_stderr")


@pytest.mark.parametrize(
    ("body", "noted"),
    [
        ("stdout_logfile=/o", True),
        ("stderr_logfile=/e", True),
        ("stdout_logfile=/o\nstdout_logfile_maxbytes=0", False),
        ("stdout_logfile=/o\nstdout_logfile_maxbytes=1MB\nredirect_stderr=true", False),
        ("stdout_logfile=/o\nstdout_logfile_maxbytes=1MB\nstderr_logfile=/e", True),
        ("stdout_logfile=NONE", False),
        ("", False),
    ],
)
def test_supervisord_default_rotation_is_pointed_out(tmp_path, body, noted):
    conf = write(tmp_path / "s.conf", f"[program:a]\ncommand=/x\n{body}\n")
    text, _ = converted(conf)
    assert has_note(top_notes(text), "50MB keeping 10 backups") is noted


def test_relative_logfile_is_kept_with_a_note(tmp_path):
    worker, notes = program(tmp_path, "command=/bin/true\nstdout_logfile=logs/p.log")
    assert worker["stdout"] == "logs/p.log"
    assert has_note(notes, "relative")


def test_missing_or_broken_command_is_noted(tmp_path):
    worker, notes = program(tmp_path, "directory=/srv")
    assert "command" not in worker and has_note(notes, "no command=")
    worker, notes = program(tmp_path, "command=/bin/echo 'unterminated")
    assert "command" not in worker and has_note(notes, "cannot be split")


def test_a_program_running_gunicorn_is_pointed_out(tmp_path):
    _, notes = program(tmp_path, "command=/srv/env/bin/gunicorn app:app")
    assert has_note(notes, "runs Gunicorn itself")
    _, notes = program(tmp_path, "command=python -m gunicorn app:app")
    assert has_note(notes, "runs Gunicorn itself")
    _, notes = program(tmp_path, "command=/bin/gunicorn-companion-helper")
    assert not has_note(notes, "runs Gunicorn itself")


# -- small parsers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1", {"A": "1"}),
        ('KEY="value",KEY2=\'v,2\',KEY3=plain', {"KEY": "value", "KEY2": "v,2", "KEY3": "plain"}),
        ('A="x,y",B=2', {"A": "x,y", "B": "2"}),
        ("A = 1 , B = 2", {"A": "1", "B": "2"}),
        ('A="x y"', {"A": "x y"}),
        ('A=" padded "', {"A": " padded "}),
        ('A=""', {"A": ""}),
        ("A=", {"A": ""}),
        ("A=1,", {"A": "1"}),
        (",A=1,,B=2", {"A": "1", "B": "2"}),
        ('A="say \\"hi\\""', {"A": 'say "hi"'}),
        ('A="back\\\\slash"', {"A": "back\\slash"}),
        ('A="keep\\n"', {"A": "keep\\n"}),  # only \" and \\ are escapes in double quotes
        ("A='no \\escapes'", {"A": "no \\escapes"}),
        ("A='it''s'", {"A": "its"}),
        ('A=pre"mid,dle"post', {"A": "premid,dlepost"}),
        ("A=1\\,2", {"A": "1,2"}),
        ('A="x=y",B=c=d', {"A": "x=y", "B": "c=d"}),
        ("URL=redis://localhost:6379/0", {"URL": "redis://localhost:6379/0"}),
        ('PATH="/a/bin:/usr/bin",LANG=C.UTF-8', {"PATH": "/a/bin:/usr/bin", "LANG": "C.UTF-8"}),
        ("\n A=1,\n B=2", {"A": "1", "B": "2"}),
        ("A=1,A=2", {"A": "2"}),
        ("", {}),
    ],
)
def test_parse_environment(text, expected):
    assert parse_environment(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('A="open', "no closing quotation"),
        ("A='open", "no closing quotation"),
        ("JUSTAWORD", "expected KEY=VALUE"),
        ("A=1,B", "expected KEY=VALUE"),
        ("=1", "not a variable name"),
        ("A B=1", "not a variable name"),
    ],
)
def test_parse_environment_errors(text, error):
    with pytest.raises(ValueError, match=error):
        parse_environment(text)


# Sizes, seconds, signals and counts follow the spec's validators, so the
# importer accepts exactly what a companion does: what supervisord wrote
# ("50MB", "1KB") and the spec's other forms ("50M", "1.5MB") too.
MAXBYTES = "command=/x\nstdout_logfile=/l\nstdout_logfile_maxbytes="


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1024", 1024), ("1KB", 1024), ("1kb", 1024), ("50MB", 50 * 1024**2),
     ("50 MB", 50 * 1024**2), ("1GB", 1024**3), (" 7 ", 7), ("50M", 50 * 1024**2),
     ("1.5MB", 3 * 1024**2 // 2), ("1TB", 1024**4), ("0MB", 0)],
)
def test_sizes(tmp_path, text, expected):
    worker, notes = program(tmp_path, MAXBYTES + text)
    assert worker["stdout_maxbytes"] == expected
    assert not has_note(notes, "stdout_logfile_maxbytes=")


@pytest.mark.parametrize("text", ["", "MB", "-1", "²", "12XB", "1,5MB"])
def test_size_errors(tmp_path, text):
    worker, notes = program(tmp_path, MAXBYTES + text)
    assert "stdout_maxbytes" not in worker
    assert has_note(notes, f"stdout_logfile_maxbytes={text.strip()}: must be 0 (never rotate)",
                    "not carried over")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("yes", True), ("on", True), ("1", True),
     ("false", False), ("No", False), ("off", False), ("0", False)],
)
def test_parse_bool(text, expected):
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "2", "y", "enabled"])
def test_parse_bool_errors(text):
    with pytest.raises(ValueError):
        parse_bool(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("TERM", "SIGTERM"), ("term", "SIGTERM"), ("SIGTERM", "SIGTERM"), (" KILL ", "SIGKILL"),
     (str(int(signal.SIGUSR2)), "SIGUSR2")],
)
def test_signals(tmp_path, text, expected):
    worker, _ = program(tmp_path, f"command=/x\nstopsignal={text}")
    assert worker["stop_signal"] == expected


@pytest.mark.parametrize("text", ["", "SIG", "NOPE", "_DFL", "SIG_DFL", "0", "12345"])
def test_signal_errors(tmp_path, text):
    worker, notes = program(tmp_path, f"command=/x\nstopsignal={text}")
    assert "stop_signal" not in worker
    assert has_note(notes, f"stopsignal={text}: ", "not carried over")


@pytest.mark.parametrize(
    ("body", "note"),
    [
        ("stopwaitsecs=-1", "stopwaitsecs=-1: must be a non-negative number of seconds"),
        ("stopwaitsecs=soon", "stopwaitsecs=soon: must be a number of seconds, got 'soon'"),
        ("stopwaitsecs=inf", "stopwaitsecs=inf: must be a non-negative number of seconds"),
        ("startsecs=nan", "startsecs=nan: must be a non-negative number of seconds"),
        ("startretries=-1", "startretries=-1: '-1' is not a whole number >= 0"),
        ("stdout_logfile=/l\nstdout_logfile_backups=x", "stdout_logfile_backups=x: 'x' is no"),
        ("numprocs=1001", "numprocs=1001: must be a whole number from 1 to 1000, got 1001; "
                          "taken as 1"),
    ],
)
def test_values_the_spec_refuses_are_left_out_with_its_reason(tmp_path, body, note):
    worker, notes = program(tmp_path, f"command=/x\n{body}")
    assert set(worker) <= {"name", "command", "stdout"}
    assert has_note(notes, note), notes


@pytest.mark.parametrize(
    ("name", "expected"),
    [("web", "web"), ("my app/v2", "my_app_v2"), ("_hidden", "hidden"), ("a:b", "a_b"),
     ("rq.default@host-1", "rq.default@host-1"), ("___", "program"), ("x" * 80, "x" * 64),
     ("café", "caf_")],
)
def test_sanitize_name(name, expected):
    assert sanitize_name(name) == expected


def test_renamed_program_is_noted_and_names_stay_unique(tmp_path):
    conf = write(
        tmp_path / "supervisord.conf",
        "[program:my app]\ncommand=/bin/a\n[program:my_app]\ncommand=/bin/b\n",
    )
    text, workers = converted(conf)
    assert [w["name"] for w in workers] == ["my_app", "my_app-2"]
    assert has_note(notes_for(text, "my app"), "renamed to 'my_app'")
    assert has_note(notes_for(text, "my_app"), "renamed to 'my_app-2'")


# -- %(...)s expansions ---------------------------------------------------------------


def test_env_expansions_resolved_from_environ(tmp_path):
    environ = {"APP": "/srv/app", "LEVEL": "debug", "Q": "short,default"}
    worker, notes = program(
        tmp_path,
        "command=%(ENV_APP)s/bin/rq worker --queue %(ENV_Q)s --level=%(ENV_LEVEL)s\n"
        "directory=%(ENV_APP)s\n"
        'environment=LOG_LEVEL="%(ENV_LEVEL)s"\n'
        "stdout_logfile=%(ENV_APP)s/logs/%(program_name)s.log",
        environ=environ,
    )
    assert worker["command"] == [
        "/srv/app/bin/rq", "worker", "--queue", "short,default", "--level=debug"
    ]
    assert worker["cwd"] == "/srv/app"
    assert worker["env"] == {"LOG_LEVEL": "debug"}
    assert worker["stdout"] == "/srv/app/logs/p.log"
    assert has_note(notes, "resolved from the environment", "APP", "Q", "LEVEL")
    assert not has_note(notes, "unresolved")


def test_env_expansions_default_to_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_TEST_DIR", "/from/os/environ")
    conf = write(tmp_path / "s.conf", "[program:p]\ncommand=/bin/ls %(ENV_SI_TEST_DIR)s\n")
    workers = load(convert(str(conf)))
    assert workers[0]["command"] == ["/bin/ls", "/from/os/environ"]


@pytest.mark.parametrize(
    ("body", "key", "value", "option", "literal"),
    [
        ("command=/bin/ls %(ENV_MISSING)s", "command", ["/bin/ls", "%(ENV_MISSING)s"],
         "command", "%(ENV_MISSING)s"),
        ("command=/bin/true\ndirectory=%(ENV_NOPE)s/x", "cwd", "%(ENV_NOPE)s/x",
         "directory", "%(ENV_NOPE)s"),
        ('command=/bin/true\nenvironment=A="%(ENV_NOPE)s"', "env", {"A": "%(ENV_NOPE)s"},
         "environment", "%(ENV_NOPE)s"),
        ("command=/bin/true\nstdout_logfile=/l/%(ENV_NOPE)s", "stdout", "/l/%(ENV_NOPE)s",
         "stdout_logfile", "%(ENV_NOPE)s"),
        ("command=/bin/ls %(mystery)s", "command", ["/bin/ls", "%(mystery)s"],
         "command", "%(mystery)s"),
        ("command=/bin/ls %(ENV_MISSING)", "command", ["/bin/ls", "%(ENV_MISSING)"],
         "command", "%(ENV_MISSING)"),
        ("command=/bin/ls 100%", "command", ["/bin/ls", "100%"], "command", "%"),
        ("command=/bin/ls %(here)d", "command", ["/bin/ls", "%(here)d"], "command", "%(here)d"),
    ],
)
def test_unresolved_expansions_stay_literal_and_are_listed(
    tmp_path, body, key, value, option, literal
):
    worker, notes = program(tmp_path, body, environ={"HOME": "/root"})
    assert worker[key] == value
    assert has_note(notes, "unresolved", f"{literal} in {option}"), notes


def test_builtin_expansions(tmp_path):
    conf = write(
        tmp_path / "conf" / "supervisord.conf",
        "[program:web]\n"
        "command=/bin/run %(program_name)s %(group_name)s %(here)s %(process_num)02d "
        "%(numprocs)d %(host_node_name)s 100%%\n"
        "[group:front]\nprograms=web\n",
    )
    _, workers = converted(conf)
    here = str(tmp_path / "conf")
    assert workers[0]["command"] == [
        "/bin/run", "web", "front", here, "00", "1", socket.gethostname(), "100%"
    ]


def test_process_num_with_numprocs_start(tmp_path):
    worker, notes = program(
        tmp_path, "command=/bin/run --port=80%(process_num)02d\nnumprocs_start=3"
    )
    assert worker["command"] == ["/bin/run", "--port=8003"]
    assert has_note(notes, "numprocs_start=3")


def test_process_num_with_numprocs_stays_literal_and_points_to_instance_env(tmp_path):
    worker, notes = program(
        tmp_path,
        "command=/bin/run --port=80%(process_num)02d\n"
        "numprocs=3\nprocess_name=%(program_name)s_%(process_num)02d\n"
        "stdout_logfile=/var/log/p-%(process_num)d.log",
    )
    assert worker["processes"] == 3
    assert worker["command"] == ["/bin/run", "--port=80%(process_num)02d"]
    assert worker["stdout"] == "/var/log/p-%(process_num)d.log"
    assert has_note(notes, "command, stdout_logfile", "GUNICORN_COMPANION_INSTANCE", "0 to 2")
    assert has_note(notes, "one file", "stdout_logfile")
    assert has_note(notes, "process_name", "p:0 to p:2")


def test_numprocs_start_with_numprocs_is_noted(tmp_path):
    worker, notes = program(
        tmp_path, "command=/bin/run\nnumprocs=2\nnumprocs_start=10\n"
        "process_name=%(program_name)s-%(process_num)d",
    )
    assert worker["processes"] == 2
    assert has_note(notes, "numprocs_start=10", "start at 0")


def test_default_process_name_needs_no_note(tmp_path):
    _, notes = program(tmp_path, "command=/bin/run\nprocess_name=%(program_name)s")
    assert notes == []
    _, notes = program(tmp_path, "command=/bin/run\nprocess_name=custom")
    assert has_note(notes, "process_name=custom", "named 'p'")


def test_supervisord_environment_reaches_every_program_and_expansions(tmp_path):
    conf = write(
        tmp_path / "supervisord.conf",
        '[supervisord]\nenvironment=BENCH="/srv/bench",SHARED=1\n'
        "[program:a]\ncommand=%(ENV_BENCH)s/bin/a\n"
        "[program:b]\ncommand=/bin/b\nenvironment=SHARED=2,OWN=%(ENV_BENCH)s\n"
        "directory=%(ENV_OWN)s\n",
    )
    text, workers = converted(conf)
    a, b = workers
    assert a["command"] == ["/srv/bench/bin/a"]
    assert a["env"] == {"BENCH": "/srv/bench", "SHARED": "1"}
    assert b["env"] == {"BENCH": "/srv/bench", "SHARED": "2", "OWN": "/srv/bench"}
    assert b["cwd"] == "/srv/bench"
    assert has_note(top_notes(text), "environment=", "every companion", "BENCH, SHARED")
    assert not has_note(notes_for(text, "a"), "resolved from the environment")


def test_here_is_the_directory_of_the_file_defining_the_section(tmp_path):
    main_conf = write(
        tmp_path / "supervisord.conf",
        "[program:top]\ncommand=%(here)s/top\n[include]\nfiles=sub/*.conf\n",
    )
    write(tmp_path / "sub" / "x.conf", "[program:inner]\ncommand=%(here)s/inner\n")
    _, workers = converted(main_conf)
    assert workers[0]["command"] == [f"{tmp_path}/top"]
    assert workers[1]["command"] == [f"{tmp_path}/sub/inner"]


# -- [include] -------------------------------------------------------------------------


def test_include_globs_relative_recursive_sorted_and_loop_guarded(tmp_path, monkeypatch):
    root = tmp_path / "etc"
    write(
        root / "supervisord.conf",
        "[program:main]\ncommand=/bin/main\n"
        "[include]\nfiles = a.conf conf.d/*.conf nothing/*.conf\n",
    )
    write(root / "a.conf", "[program:a]\ncommand=/bin/a\n")
    write(
        root / "conf.d" / "b.conf",
        "[program:b]\ncommand=/bin/b\n[include]\nfiles=sub/*.conf\n",  # relative to conf.d
    )
    write(root / "conf.d" / "c.conf", "[program:c]\ncommand=/bin/c\n")
    write(root / "conf.d" / "ignored.txt", "[program:ignored]\ncommand=/bin/x\n")
    write(
        root / "conf.d" / "sub" / "d.conf",
        "[program:d]\ncommand=/bin/d\n[include]\nfiles=../../supervisord.conf ../c.conf\n",
    )
    monkeypatch.chdir(tmp_path)
    text, workers = converted("etc/supervisord.conf")
    assert [w["name"] for w in workers] == ["main", "a", "b", "d", "c"]
    notes = top_notes(text)
    assert notes[0].endswith("from etc/supervisord.conf")
    assert [n for n in notes if n.startswith("  including")] == [
        "  including etc/a.conf",
        "  including etc/conf.d/b.conf",
        "  including etc/conf.d/sub/d.conf",
        "  including etc/conf.d/c.conf",
    ]
    assert has_note(notes, "include loop", "etc/supervisord.conf")
    assert has_note(notes, "'nothing/*.conf' matches no file")
    assert "from etc/conf.d/sub/d.conf" in text


def test_include_of_itself_is_a_loop(tmp_path):
    conf = write(
        tmp_path / "supervisord.conf", "[program:a]\ncommand=/x\n[include]\nfiles=*.conf\n"
    )
    write(tmp_path / "other.conf", "[program:b]\ncommand=/y\n")
    text, workers = converted(conf)
    assert [w["name"] for w in workers] == ["a", "b"]
    assert has_note(top_notes(text), "include loop")


def test_include_with_absolute_glob_and_env(tmp_path):
    write(tmp_path / "progs" / "one.conf", "[program:one]\ncommand=/x\n")
    conf = write(tmp_path / "main" / "s.conf", "[include]\nfiles=%(ENV_PROGS)s/*.conf\n")
    _, workers = converted(conf, {"PROGS": str(tmp_path / "progs")})
    assert [w["name"] for w in workers] == ["one"]


def test_include_without_files_is_noted(tmp_path):
    conf = write(tmp_path / "s.conf", "[include]\n[program:a]\ncommand=/x\n")
    text, _ = converted(conf)
    assert has_note(top_notes(text), "no files=")


def test_section_redefined_in_an_include_is_merged_with_a_note(tmp_path):
    conf = write(
        tmp_path / "s.conf",
        "[program:a]\ncommand=/x\nstartsecs=1\n[include]\nfiles=more.conf\n",
    )
    write(tmp_path / "more.conf", "[program:a]\nstartsecs=5\n")
    text, workers = converted(conf)
    assert workers == [{"name": "a", "command": ["/x"], "startsecs": 5}]
    assert has_note(notes_for(text, "a"), "more than one file")


# -- nothing is dropped silently ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("umask=022", "umask=022"),
        ("priority=10", "priority=10"),
        ("autorestart=false", "autorestart=false"),
        ("autorestart=sometimes", "autorestart=sometimes"),
        ("exitcodes=0,2", "exitcodes=0,2"),
        ("killasgroup=true", "always goes to the companion's whole process group"),
        ("killasgroup=false", "always goes to the companion's whole process group"),
        ("serverurl=AUTO", "serverurl=AUTO"),
        ("stdout_capture_maxbytes=1MB", "stdout_capture_maxbytes"),
        ("stderr_capture_maxbytes=1MB", "stderr_capture_maxbytes"),
        ("stdout_events_enabled=true", "stdout_events_enabled"),
        ("stderr_events_enabled=true", "stderr_events_enabled"),
        ("stdout_syslog=true", "stdout_syslog"),
        ("stderr_syslog=true", "stderr_syslog"),
        ("frobnicate=yes", "frobnicate=yes"),
        ("stdout_logfile_maxbyte=1MB", "did you mean stdout_logfile_maxbytes"),
        ("process_name=%(program_name)s-x", "process_name"),
    ],
)
def test_every_key_without_an_equivalent_gets_a_comment(tmp_path, line, fragment):
    conf = write(
        tmp_path / "s.conf",
        f"[program:a]\ncommand=/x\n{line}\n[program:b]\ncommand=/y\n",
    )
    text, workers = converted(conf)
    assert len(workers) == 2
    assert has_note(notes_for(text, "a"), fragment, "not carried over")
    assert notes_for(text, "b") == []
    assert not has_note(top_notes(text), fragment)


def test_user_is_carried_over_with_what_it_needs(tmp_path):
    worker, notes = program(tmp_path, "command=/x\nuser=frappe")
    assert worker["user"] == "frappe"
    assert notes == ["user=frappe: switching users needs Gunicorn started as root; the key may "
                     "be left out when Gunicorn's own user is this one"]


@pytest.mark.parametrize("value", ["true", "unexpected", "TRUE", "Unexpected", "yes"])
def test_autorestart_true_or_unexpected_needs_no_comment(tmp_path, value):
    _, notes = program(tmp_path, f"command=/x\nautorestart={value}")
    assert notes == []


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("[eventlistener:mem]\ncommand=memmon -p web=200MB\nevents=TICK_60", "[eventlistener:mem]"),
        ("[group:redis]\nprograms=a\npriority=5", "[group:redis] programs=a"),
        ("[group:redis]\nprograms=a,ghost", "no [program:x] section for ghost"),
        ("[fcgi-program:php]\ncommand=/usr/bin/php-cgi\nsocket=tcp://localhost:9000",
         "[fcgi-program:php]"),
        ("[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = x:y",
         "[rpcinterface:supervisor]"),
        ("[supervisord]\nlogfile=/tmp/s.log\nnodaemon=true", "[supervisord] logfile, nodaemon"),
        ("[unix_http_server]\nfile=/tmp/s.sock", "[unix_http_server] file"),
        ("[inet_http_server]\nport=127.0.0.1:9001", "[inet_http_server] port"),
        ("[supervisorctl]\nserverurl=unix:///tmp/s.sock", "[supervisorctl] serverurl"),
        ("[weird]\nx=1", "[weird]"),
    ],
)
def test_file_level_sections_get_a_comment_at_the_top(tmp_path, section, fragment):
    conf = write(tmp_path / "s.conf", f"[program:a]\ncommand=/x\n{section}\n")
    text, workers = converted(conf)
    assert [w["name"] for w in workers] == ["a"]
    assert has_note(top_notes(text), fragment, "not carried over")
    if section.startswith("[group:"):
        assert has_note(notes_for(text, "a"), "[group:redis]")


def test_no_programs_gives_an_empty_list(tmp_path):
    conf = write(tmp_path / "s.conf", "[supervisord]\nnodaemon=true\n")
    text, workers = converted(conf)
    assert workers == []
    assert has_note(top_notes(text), "No [program:x] sections")


# -- the output is always valid ---------------------------------------------------------

_TOKENS = list("aZ09 /._-=,:;#%()\"'\\$\t{}[]é") + [
    "%(ENV_X)s", "%(ENV_UNSET)s", "%%", "%(process_num)02d", "%(here)s", "%(program_name)s",
    "AUTO", "NONE", "true", "2", "50MB", "TERM", " ;c", " #c", "inherit", "stdout", "1001",
]
_VALUE = st.lists(st.sampled_from(_TOKENS), max_size=12).map("".join)
_KEYS = st.sampled_from(list(si.PROGRAM_KEYS) + ["bogus", "logfile"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(alphabet=st.sampled_from(list("ab9_-. /@é'\"")), min_size=1, max_size=12),
    items=st.lists(st.tuples(_KEYS, _VALUE), max_size=8),
)
def test_output_always_parses_to_known_keys(tmp_path, name, items):
    name = name.strip().replace("]", "")
    if not name:
        name = "p"
    body = "".join(f"{key}={value}\n" for key, value in items)
    conf = tmp_path / "fuzz.conf"
    conf.write_text(f"[program:{name}]\ncommand=/bin/x\n{body}[group:g]\nprograms={name}\n")
    try:
        text = convert(str(conf), environ={"X": "x'\"\n"})
    except SupervisorConfigError as exc:
        assert "\n" not in str(exc)
        return
    load(text)


def test_control_characters_never_escape_a_comment(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text("[program:a]\ncommand=/x\nuser=a\n  continued\x0bline\x00\n[weird\x85]\nk=v\n")
    text, workers = converted(conf)
    assert workers[0]["name"] == "a"
    assert "\x00" not in text and "\x0b" not in text


# -- main() -----------------------------------------------------------------------------


def test_main_prints_the_block(tmp_path, capsys):
    conf = write(tmp_path / "s.conf", "[program:a]\ncommand=/x\n")
    assert main([str(conf)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert load(out) == [{"name": "a", "command": ["/x"]}]


def one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("gunicorn-companion import-supervisor: error: ")
    return err


@pytest.mark.parametrize(
    ("files", "target", "fragments"),
    [
        ({}, "missing.conf", ["missing.conf", "no such file"]),
        ({"dir.conf/x": ""}, "dir.conf", ["dir.conf", "directory"]),
        ({"bad.conf": "[program:a\ncommand=/x\n"}, "bad.conf",
         ["bad.conf", "line 1", "bad section header", "[program:a"]),
        ({"bad.conf": "[program:a]\ncommand=/x\n[program:b\n"}, "bad.conf",
         ["bad.conf", "line 3", "bad section header"]),
        ({"bad.conf": "[program:]\ncommand=/x\n"}, "bad.conf", ["bad.conf", "has no name"]),
        ({"bad.conf": "command=/x\n[program:a]\n"}, "bad.conf",
         ["bad.conf", "line 1", "before the first [section]"]),
        ({"bad.conf": "[program:a]\ncommand=/x\njust words\n"}, "bad.conf",
         ["bad.conf", "line 3", "not a 'key = value' line"]),
        ({"latin1.conf": b"[program:a]\ncommand=/caf\xe9\n"}, "latin1.conf",
         ["latin1.conf", "not UTF-8"]),
        ({"main.conf": "[include]\nfiles=inc/*.conf\n", "inc/broken.conf": "[oops\n"},
         "main.conf", ["broken.conf", "line 1", "bad section header"]),
    ],
)
def test_main_errors_are_one_line_naming_the_file(tmp_path, capsys, files, target, fragments):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    assert main([str(tmp_path / target)]) == 2
    err = one_line_error(capsys)
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize(
    ("error", "fragment"),
    [(PermissionError(13, "Permission denied"), "permission denied"),
     (OSError(5, "Input/output error"), "cannot read: Input/output error")],
)
def test_main_unreadable_file(tmp_path, capsys, monkeypatch, error, fragment):
    # Simulated: as root, a file's mode does not stop reading it.
    conf = write(tmp_path / "secret.conf", "[program:a]\ncommand=/x\n")

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(si, "open", refuse, raising=False)
    assert main([str(conf)]) == 2
    err = one_line_error(capsys)
    assert "secret.conf" in err and fragment in err


def test_main_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert "usage: gunicorn-companion import-supervisor" in capsys.readouterr().err
    assert main(["a.conf", "b.conf"]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "FILE" in capsys.readouterr().out


# -- a Frappe bench, end to end ---------------------------------------------------------


def test_frappe_bench_end_to_end(monkeypatch):
    """The checked-in expected output; regenerate after an intended change with
    ``cd tests/data/supervisor && python -m gunicorn_companion.supervisor_import
    frappe/supervisord.conf > frappe/expected.txt``."""
    monkeypatch.chdir(DATA)
    text = convert("frappe/supervisord.conf", environ={})
    expected = (DATA / "frappe" / "expected.txt").read_text()
    assert text == expected
    workers = load(text)
    assert [w["name"] for w in workers] == [
        "frappe-bench-frappe-web",
        "frappe-bench-frappe-schedule",
        "frappe-bench-frappe-short-worker",
        "frappe-bench-frappe-long-worker",
        "frappe-bench-node-socketio",
        "frappe-bench-redis-cache",
        "frappe-bench-redis-queue",
    ]
    by_name = {w["name"]: w for w in workers}
    short = by_name["frappe-bench-frappe-short-worker"]
    assert short["command"] == ["/usr/local/bin/bench", "worker", "--queue", "short,default"]
    assert short["processes"] == 2
    assert by_name["frappe-bench-frappe-long-worker"]["processes"] == 3
    assert has_note(top_notes(text), "[group:frappe-bench-redis]")


def test_frappe_output_is_accepted_by_the_companion_spec(monkeypatch):
    """Every key and value, as written (only user=frappe is replaced: that
    account exists on the machine that runs the bench)."""
    monkeypatch.chdir(DATA)
    workers = load(convert("frappe/supervisord.conf", environ={}))
    assert sum("user" in w for w in workers) == len(workers)
    specs = accepted(workers)
    assert len(specs) == 1 + 1 + 2 + 3 + 1 + 1 + 1


def test_error_naming_a_file_with_a_newline_stays_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "two\nlines.conf")]) == 2
    assert "two\\nlines.conf" in one_line_error(capsys)


# -- edge cases: names, instances, includes, environment, repeats ---------------------


def test_a_third_duplicate_name_gets_the_next_number(tmp_path):
    conf = write(tmp_path / "s.conf", "".join(
        f"[program:{name}]\ncommand=/x\n" for name in ("a b", "a/b", "a:b", "a_b-2")))
    _, workers = converted(conf)
    assert [w["name"] for w in workers] == ["a_b", "a_b-2", "a_b-3", "a_b-2-2"]


def test_a_64_character_name_is_kept_and_its_duplicate_still_fits(tmp_path):
    name = "n" * 64
    conf = write(tmp_path / "s.conf",
                 f"[program:{name}]\ncommand=/x\n[program:{name}!]\ncommand=/x\n")
    text, workers = converted(conf)
    assert [w["name"] for w in workers] == [name, "n" * 60 + "-2"]
    assert notes_for(text, name) == []
    assert sanitize_name("n" * 65) == name


def test_numprocs_2_with_process_num_runs_two_instances(tmp_path):
    worker, notes = program(
        tmp_path, "command=/bin/worker --id %(process_num)d\nnumprocs=2\n"
                  "process_name=%(program_name)s_%(process_num)02d")
    assert worker["processes"] == 2
    assert worker["command"] == ["/bin/worker", "--id", "%(process_num)d"]
    assert has_note(notes, "%(process_num)d in command is different for each of the 2 instances",
                    "GUNICORN_COMPANION_INSTANCE (0 to 1)")
    assert has_note(notes, "process_name=", "the instances are named p:0 to p:1")
    specs = accepted([worker])
    assert [s.name for s in specs] == ["p:0", "p:1"]


def test_here_in_include_is_the_including_files_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # %(here)s, not the working directory, must decide
    write(tmp_path / "etc" / "conf.d" / "a.conf", "[program:a]\ncommand=/x\n")
    write(tmp_path / "etc" / "conf.d" / "b.ini", "[program:b]\ncommand=/x\n")
    conf = write(tmp_path / "etc" / "supervisord.conf",
                 "[include]\nfiles = %(here)s/conf.d/*.conf\n")
    text, workers = converted(conf)
    assert [w["name"] for w in workers] == ["a"]
    assert f"#   including {tmp_path / 'etc' / 'conf.d' / 'a.conf'}" in text


@pytest.mark.parametrize(
    ("value", "env"),
    [
        ("A=x\\", {"A": "x\\"}),  # a trailing backslash escapes nothing: kept
        ("A=x\\,B=y", {"A": "x,B=y"}),  # an escaped comma does not separate
        ('A="x\\\\"', {"A": "x\\"}),
    ],
)
def test_backslashes_in_environment(tmp_path, value, env):
    worker, notes = program(tmp_path, f"command=/x\nenvironment={value}")
    assert worker["env"] == env
    assert not has_note(notes, "environment=")


def test_a_repeated_section_is_merged_with_a_note(tmp_path):
    conf = write(tmp_path / "s.conf", "[program:a]\ncommand=/x\nuser=u\n"
                                      "[program:b]\ncommand=/b\n"
                                      "[program:a]\ncommand=/y\n")
    text, workers = converted(conf)
    assert workers[0] == {"name": "a", "command": ["/y"], "user": "u"}
    assert has_note(notes_for(text, "a"),
                    f"[program:a] appears more than once in {conf}; values merged, "
                    "the last one wins")
    assert not has_note(notes_for(text, "b"), "more than once")


@pytest.mark.parametrize("word", ["inherit", "stdout", "stderr"])
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_log_file_named_like_a_destination_stays_a_file(tmp_path, word, stream):
    # to supervisord, a file of that name in its working directory
    worker, notes = program(tmp_path, f"command=/x\n{stream}_logfile={word}")
    assert worker[stream] == f"./{word}"
    assert has_note(notes, f"{stream}_logfile={word}: written as './{word}'")


@pytest.mark.parametrize(
    ("body", "absent", "note"),
    [
        ("command=''", "command", "command='': must name a program to run"),
        ("command=/x\nnumprocs=5000", "processes", "numprocs=5000: must be a whole number "
                                                   "from 1 to 1000, got 5000; taken as 1"),
    ],
)
def test_what_the_spec_would_refuse_is_left_out_with_a_note(tmp_path, body, absent, note):
    worker, notes = program(tmp_path, body)
    assert absent not in worker
    assert has_note(notes, note), notes
