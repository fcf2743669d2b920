"""Table tests for spec.py: companion_workers + companion_* defaults -> specs.

Every bad configuration must be reported with the exact fault in the message,
and every fault of one config must come out of a single ConfigError.
"""

from __future__ import annotations

import math
import signal
from dataclasses import replace

import pytest

from gunicorn_companion.spec import (
    DEFAULTABLE_KEYS,
    INHERIT,
    KNOWN_KEYS,
    CompanionSpec,
    ConfigError,
    parse_companions,
    parse_defaults,
    suggest,
    validate_backups,
    validate_bool,
    validate_command,
    validate_cwd,
    validate_env,
    validate_maxbytes,
    validate_name,
    validate_optional_positive_seconds,
    validate_processes,
    validate_seconds,
    validate_signal,
    validate_size,
    validate_startretries,
    validate_stderr,
    validate_stdout,
    validate_target,
    validate_timestamp_format,
)

MISSING_TARGET = "missing 'target' (a 'module:callable') or 'command' (a program to run)"

# Seconds that may be 0 and fall back to a companion_<key> global.
TIMEOUT_KEYS = ("stop_timeout", "reload_timeout", "startsecs", "restart_delay",
                "max_restart_delay")


_DROP = object()  # entry(key=_DROP) leaves the key out


def entry(**extra):
    """A valid companion_workers entry named 'w', plus (or minus) some keys."""
    base = {"name": "w", "target": "pkg.mod:main"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not _DROP}


def problems_of(entries, values=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_companions(entries, values)
    return info.value.problems


def only_problem(entries, values=None) -> str:
    problems = problems_of(entries, values)
    assert len(problems) == 1, problems
    return problems[0]


# -- a valid config ---------------------------------------------------------------


def test_minimal_entry_takes_builtin_defaults():
    (spec,) = parse_companions([{"name": "w", "target": "pkg.mod:main"}])
    assert spec == CompanionSpec(name="w", target="pkg.mod:main")
    assert spec.stop_signal == signal.SIGTERM
    assert spec.stop_signal_name == "SIGTERM"
    assert (spec.stop_timeout, spec.reload_timeout, spec.startsecs, spec.restart_delay) == (
        10.0, 10.0, 1.0, 1.0,
    )
    assert (spec.stdout, spec.stderr, spec.cwd, spec.env) == (INHERIT, INHERIT, None, ())


def test_full_entry_is_normalised():
    (spec,) = parse_companions([{
        "name": "sched-1",
        "target": "app.jobs:Scheduler.run",
        "cwd": "/srv/app",
        "env": {"B": "2", "A": "1"},
        "stop_signal": "int",
        "stop_timeout": 3,
        "reload_timeout": 4.5,
        "startsecs": 0,
        "restart_delay": 0.25,
        "stdout": "/var/log/sched.out",
        "stderr": "stdout",
    }])
    assert spec == CompanionSpec(
        name="sched-1", target="app.jobs:Scheduler.run", cwd="/srv/app",
        env=(("A", "1"), ("B", "2")), stop_signal=2, stop_timeout=3.0,
        reload_timeout=4.5, startsecs=0.0, restart_delay=0.25,
        stdout="/var/log/sched.out", stderr="stdout",
    )
    assert isinstance(spec.stop_timeout, float)
    assert spec.stop_signal_name == "SIGINT"


@pytest.mark.parametrize("entries", [None, [], ()], ids=["None", "list", "tuple"])
def test_no_companions(entries):
    assert parse_companions(entries) == ()


def test_tuple_of_entries_and_order_kept():
    specs = parse_companions(({"name": "b", "target": "m:f"}, {"name": "a", "target": "m:g"}))
    assert [s.name for s in specs] == ["b", "a"]


def test_values_may_be_omitted():
    assert parse_companions([entry()], None) == parse_companions([entry()], {})


# -- shape of companion_workers and its entries -----------------------------------


@pytest.mark.parametrize(
    "entries, kind",
    [
        ({"name": "w", "target": "m:f"}, "dict"),
        ("w", "str"),
        (5, "int"),
        ({"w"}, "set"),
    ],
)
def test_companion_workers_not_a_list(entries, kind):
    assert only_problem(entries) == f"companion_workers must be a list of dicts, got {kind}"


def test_companion_workers_not_a_list_still_reports_bad_globals():
    assert problems_of("w", {"companion_startsecs": -1}) == [
        "companion_startsecs: must be a non-negative number of seconds, got -1",
        "companion_workers must be a list of dicts, got str",
    ]


@pytest.mark.parametrize(
    "bad, kind",
    [("w", "str"), (None, "NoneType"), (["name", "w"], "list"), (3, "int")],
)
def test_entry_not_a_dict(bad, kind):
    assert problems_of([entry(), bad]) == [f"companion_workers[1] must be a dict, got {kind}"]


# -- unknown keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("stop_timout", "stop_timeout"),
        ("stoptimeout", "stop_timeout"),
        ("stop_signl", "stop_signal"),
        ("restart_dealy", "restart_delay"),
        ("start_secs", "startsecs"),
        ("targte", "target"),
        ("stdeer", "stderr"),
        ("envs", "env"),
    ],
)
def test_unknown_key_with_suggestion(key, suggestion):
    assert only_problem([entry(**{key: 1})]) == (
        f"companion 'w': unknown key {key!r} (did you mean {suggestion!r}?)"
    )


@pytest.mark.parametrize("key", ["colour", "numprocs", "x"])
def test_unknown_key_without_close_match(key):
    problem = only_problem([entry(**{key: 1})])
    assert problem == f"companion 'w': unknown key {key!r}"
    assert "did you mean" not in problem


def test_unknown_non_string_key():
    bad = entry()
    bad[5] = "x"
    assert only_problem([bad]) == "companion 'w': unknown key 5"


@pytest.mark.parametrize(
    "key, expected",
    [
        ("stop_timout", " (did you mean 'stop_timeout'?)"),
        ("colour", ""),
        ("name", " (did you mean 'name'?)"),
    ],
)
def test_suggest(key, expected):
    assert suggest(key, KNOWN_KEYS) == expected


def test_known_keys():
    assert set(KNOWN_KEYS) == {
        "name", "target", "command", "cwd", "env", "stop_signal", "stop_timeout",
        "reload_timeout", "startsecs", "restart_delay", "max_restart_delay", "startretries",
        "stdout", "stderr", "processes", "autostart", "singleton", "wait_ready", "max_lifetime",
        "max_lifetime_jitter", "max_memory", "watchdog_timeout", "stdout_maxbytes",
        "stdout_backups", "stderr_maxbytes", "stderr_backups", "timestamps", "timestamp_format",
        "stop_as_group", "user", "group",
    }


# -- name and target ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, problems",
    [
        pytest.param(entry(name=_DROP), ["companion_workers[0]: missing 'name'"], id="no-name"),
        pytest.param(entry(target=_DROP), ["companion 'w': " + MISSING_TARGET], id="no-target"),
        pytest.param(
            {},
            ["companion_workers[0]: missing 'name'", "companion_workers[0]: " + MISSING_TARGET],
            id="empty-dict",
        ),
        pytest.param(
            entry(name=""),
            ["companion_workers[0]: 'name' must be a non-empty string, got ''"],
            id="empty-name",
        ),
        pytest.param(
            entry(name=None),
            ["companion_workers[0]: 'name' must be a non-empty string, got None"],
            id="None-name",
        ),
        pytest.param(
            entry(name=7),
            ["companion_workers[0]: 'name' must be a non-empty string, got 7"],
            id="int-name",
        ),
        pytest.param(
            entry(name=["w"]),
            ["companion_workers[0]: 'name' must be a non-empty string, got ['w']"],
            id="list-name",
        ),
        pytest.param(
            entry(target=""),
            ["companion 'w': 'target' must be a non-empty string, got ''"],
            id="empty-target",
        ),
        pytest.param(
            entry(target=None),
            ["companion 'w': 'target' must be a non-empty string, got None"],
            id="None-target",
        ),
    ],
)
def test_missing_or_empty_name_and_target(bad, problems):
    assert problems_of([bad]) == problems


BAD_NAMES = [
    "my worker", "-web", ".web", "_web", "@web", "web/1", "web:1", "w\u00e9b", "web;rm",
    "web\t", "a" * 65, "web*", "we'b",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_name_with_bad_characters(name):
    problem = only_problem([entry(name=name)])
    assert problem == (
        f"companion_workers[0]: 'name' {name!r} may hold only letters, digits and '_.@-' "
        "(starting with a letter or digit, at most 64 characters)"
    )
    with pytest.raises(ValueError):
        validate_name(name)


@pytest.mark.parametrize("name", ["web", "a", "9lives", "Web_1.x@host-2", "a" * 64, "A-B"])
def test_good_names(name):
    assert validate_name(name) == name
    assert parse_companions([entry(name=name)])[0].name == name


def test_name_with_trailing_newline_is_rejected():
    with pytest.raises(ConfigError):
        parse_companions([entry(name="web\n")])


def test_target_with_trailing_newline_is_rejected():
    with pytest.raises(ValueError):
        validate_target("m:f\n")


@pytest.mark.parametrize(
    "target",
    [
        "module", "module.main", "module:", ":main", "m:f:g", "mod-ule:f", "m:f()",
        "1mod:f", "mod.:f", "m:.f", "m..n:f", "m:f ", " m:f", "m: f", "m/x:f", "m:f-g",
    ],
)
def test_target_bad_syntax(target):
    assert only_problem([entry(target=target)]) == (
        f"companion 'w': 'target' {target!r} must look like 'module:callable'"
    )


@pytest.mark.parametrize("bad", [5, ["m:f"], b"m:f"])
def test_target_not_a_string(bad):
    assert only_problem([entry(target=bad)]) == (
        f"companion 'w': 'target' must be a non-empty string, got {bad!r}"
    )


@pytest.mark.parametrize("target", ["m:f", "pkg.sub.mod:Class.method", "_m:_f", "M1:f2"])
def test_good_targets(target):
    assert validate_target(target) == target


def test_where_falls_back_to_index_when_name_is_bad():
    assert problems_of([entry(name="bad name", stop_timeout=-1)]) == [
        "companion_workers[0]: 'name' 'bad name' may hold only letters, digits and '_.@-' "
        "(starting with a letter or digit, at most 64 characters)",
        "companion_workers[0]: stop_timeout must be a non-negative number of seconds, got -1",
    ]


# -- duplicate names ------------------------------------------------------------


def test_duplicate_names():
    entries = [entry(name="a"), entry(name="web"), entry(name="b"), entry(name="web")]
    problem = only_problem(entries)
    assert problem == "companion_workers[3]: duplicate name 'web' (companion_workers[1] has it too)"
    assert "'web'" in problem and "companion_workers[1]" in problem


def test_each_extra_duplicate_is_reported_against_the_first():
    entries = [entry(name="web"), entry(name="web"), entry(name="web")]
    assert problems_of(entries) == [
        "companion_workers[1]: duplicate name 'web' (companion_workers[0] has it too)",
        "companion_workers[2]: duplicate name 'web' (companion_workers[0] has it too)",
    ]


def test_duplicate_message_names_both_indexes():
    entries = [entry(name="web"), entry(name="web"), entry(name="web")]
    problems = problems_of(entries)
    assert "companion_workers[1]" in problems[0] and "companion_workers[0]" in problems[0]
    assert "companion_workers[2]" in problems[1] and "companion_workers[0]" in problems[1]


def test_names_are_case_sensitive():
    assert [s.name for s in parse_companions([entry(name="Web"), entry(name="web")])] == [
        "Web", "web",
    ]


# -- stop_signal ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["SIGINT", "INT", "int", "sigint", "SigInt", " SIGINT ", 2, "2", " 2 ", signal.SIGINT]
)
def test_signal_forms_accepted(value):
    assert validate_signal(value) == 2
    (spec,) = parse_companions([entry(stop_signal=value)])
    assert spec.stop_signal == 2
    assert type(spec.stop_signal) is int


@pytest.mark.parametrize(
    "value, expected",
    [("TERM", 15), ("SIGKILL", 9), ("usr1", int(signal.SIGUSR1)), ("QUIT", 3), ("hup", 1)],
)
def test_other_signals(value, expected):
    assert validate_signal(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("SIGFOO", "'SIGFOO' is not a signal name (try 'SIGTERM', 'INT' or 15)"),
        ("FOO", "'FOO' is not a signal name (try 'SIGTERM', 'INT' or 15)"),
        ("", "'' is not a signal name (try 'SIGTERM', 'INT' or 15)"),
        ("SIG_DFL", "'SIG_DFL' is not a signal name (try 'SIGTERM', 'INT' or 15)"),
        ("-1", "'-1' is not a signal name (try 'SIGTERM', 'INT' or 15)"),
        (999, "999 is not a signal number on this system"),
        ("999", "'999' is not a signal number on this system"),
        (0, "0 is not a signal number on this system"),
        (-15, "-15 is not a signal number on this system"),
        (True, "True is not a signal name or number"),
        (False, "False is not a signal name or number"),
        (2.0, "2.0 is not a signal name or number"),
        (None, "None is not a signal name or number"),
        (["INT"], "['INT'] is not a signal name or number"),
    ],
)
def test_unknown_signal(value, message):
    with pytest.raises(ValueError) as info:
        validate_signal(value)
    assert str(info.value) == message
    assert only_problem([entry(stop_signal=value)]) == f"companion 'w': stop_signal {message}"


# -- the four timeouts --------------------------------------------------------------

BAD_SECONDS = [
    pytest.param(-1, "must be a non-negative number of seconds, got -1", id="negative-int"),
    pytest.param(-0.5, "must be a non-negative number of seconds, got -0.5", id="negative-float"),
    pytest.param(math.nan, "must be a non-negative number of seconds, got nan", id="nan"),
    pytest.param(math.inf, "must be a non-negative number of seconds, got inf", id="inf"),
    pytest.param(-math.inf, "must be a non-negative number of seconds, got -inf", id="-inf"),
    pytest.param("soon", "must be a number of seconds, got 'soon'", id="word"),
    pytest.param(None, "must be a number of seconds, got None", id="None"),
    pytest.param(True, "must be a number of seconds, got True", id="True"),
    pytest.param(False, "must be a number of seconds, got False", id="False"),
    pytest.param([1], "must be a number of seconds, got [1]", id="list"),
]


@pytest.mark.parametrize("key", TIMEOUT_KEYS)
def test_numeric_strings_are_seconds_as_in_gunicorn_settings(key):
    assert getattr(_one(entry(**{key: "5"})), key) == 5.0
    assert only_problem([entry(**{key: "-5"})]) == (
        f"companion 'w': {key} must be a non-negative number of seconds, got -5.0")


@pytest.mark.parametrize("key", TIMEOUT_KEYS)
@pytest.mark.parametrize("value, message", BAD_SECONDS)
def test_bad_timeouts(key, value, message):
    if key == "reload_timeout" and value is None:
        # None is reload_timeout's "as long as stop_timeout" (test_reload_timeout_follows...)
        assert parse_companions([entry(reload_timeout=None, stop_timeout=3)])[0].reload_timeout == 3
        return
    assert only_problem([entry(**{key: value})]) == f"companion 'w': {key} {message}"


@pytest.mark.parametrize("key", TIMEOUT_KEYS)
@pytest.mark.parametrize(
    "value, message",
    # a global set to None means "the built-in default" (see test_global_none_means_builtin)
    [p for p in BAD_SECONDS if p.values[0] is not None],
)
def test_bad_global_timeouts(key, value, message):
    assert only_problem([entry()], {f"companion_{key}": value}) == f"companion_{key}: {message}"


@pytest.mark.parametrize("key", TIMEOUT_KEYS)
@pytest.mark.parametrize("value", [0, 0.0, 1, 2.5, 10**6])
def test_good_timeouts(key, value):
    (spec,) = parse_companions([entry(**{key: value})])
    assert getattr(spec, key) == float(value)
    assert type(getattr(spec, key)) is float
    assert validate_seconds(value) == float(value)


# -- stdout / stderr -------------------------------------------------------------


@pytest.mark.parametrize("value", ["/var/log/x.log", "relative.log", "stdout", "inherit", " x"])
def test_stderr_accepted(value):
    assert validate_stderr(value) == value
    assert parse_companions([entry(stderr=value)])[0].stderr == value


@pytest.mark.parametrize(
    "value, message",
    [
        (5, "must be a file path, 'stdout' or 'inherit', got 5"),
        ("", "must be a file path, 'stdout' or 'inherit', got ''"),
        ("   ", "must be a file path, 'stdout' or 'inherit', got '   '"),
        (None, "must be a file path, 'stdout' or 'inherit', got None"),
        ("stderr", "'stderr' is not allowed here; use a file path, 'stdout' or 'inherit'"),
    ],
)
def test_stderr_rejected(value, message):
    assert only_problem([entry(stderr=value)]) == f"companion 'w': stderr {message}"


@pytest.mark.parametrize("value", ["/var/log/x.log", "inherit", "out.txt"])
def test_stdout_accepted(value):
    assert validate_stdout(value) == value
    assert parse_companions([entry(stdout=value)])[0].stdout == value


@pytest.mark.parametrize(
    "value, message",
    [
        ("stdout", "'stdout' is not allowed here; use a file path or 'inherit'"),
        ("stderr", "'stderr' is not allowed here; use a file path or 'inherit'"),
        ("", "must be a file path or 'inherit', got ''"),
        (None, "must be a file path or 'inherit', got None"),
        (1, "must be a file path or 'inherit', got 1"),
    ],
)
def test_stdout_rejected(value, message):
    assert only_problem([entry(stdout=value)]) == f"companion 'w': stdout {message}"


# -- env and cwd -------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ()),
        ({"A": "1"}, (("A", "1"),)),
        ({"B": "", "A": "x=y"}, (("A", "x=y"), ("B", ""))),
    ],
)
def test_env_accepted(env, expected):
    assert validate_env(env) == expected
    assert parse_companions([entry(env=env)])[0].env == expected


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PORT": 8000}, "'PORT' must be a string, got 8000 (quote it: '8000')"),
        ({"DEBUG": True}, "'DEBUG' must be a string, got True (quote it: 'True')"),
        ({"X": None}, "'X' must be a string, got None (quote it: 'None')"),
        ({"X": "a\0b"}, "'X' contains a NUL byte"),
        ({"": "1"}, "key '' is not a valid environment variable name"),
        ({"A=B": "1"}, "key 'A=B' is not a valid environment variable name"),
        ({3: "1"}, "key 3 is not a valid environment variable name"),
        (
            {"A": 1, "B": 2},
            "'A' must be a string, got 1 (quote it: '1'); "
            "'B' must be a string, got 2 (quote it: '2')",
        ),
        ([("A", "1")], "must be a dict of strings, got list"),
        ("A=1", "must be a dict of strings, got str"),
        (None, "must be a dict of strings, got NoneType"),
    ],
)
def test_env_rejected(env, message):
    assert only_problem([entry(env=env)]) == f"companion 'w': env {message}"


@pytest.mark.parametrize("cwd", [None, "/srv/app", "relative/dir"])
def test_cwd_accepted(cwd):
    assert validate_cwd(cwd) == cwd
    assert parse_companions([entry(cwd=cwd)])[0].cwd == cwd


@pytest.mark.parametrize(
    "cwd, message",
    [("", "must be a directory path, got ''"), (5, "must be a directory path, got 5"),
     (["/srv"], "must be a directory path, got ['/srv']")],
)
def test_cwd_rejected(cwd, message):
    assert only_problem([entry(cwd=cwd)]) == f"companion 'w': cwd {message}"


# -- every problem at once ---------------------------------------------------------


def test_three_bad_entries_three_problems_in_order():
    entries = [
        "not-a-dict",
        entry(name="b", target="no_colon"),
        entry(name="c", stop_signal="SIGFOO"),
    ]
    assert problems_of(entries) == [
        "companion_workers[0] must be a dict, got str",
        "companion 'b': 'target' 'no_colon' must look like 'module:callable'",
        "companion 'c': stop_signal 'SIGFOO' is not a signal name (try 'SIGTERM', 'INT' or 15)",
    ]


def test_problems_of_one_entry_come_in_a_fixed_order():
    bad = {
        "stderr": "stderr",
        "stop_timeout": -1,
        "env": {"P": 1},
        "colour": "red",
        "name": "w",
    }
    assert problems_of([bad], {"companion_restart_delay": "x"}) == [
        "companion_restart_delay: must be a number of seconds, got 'x'",
        "companion 'w': unknown key 'colour'",
        "companion 'w': missing 'target' (a 'module:callable') or 'command' "
        "(a program to run)",
        "companion 'w': env 'P' must be a string, got 1 (quote it: '1')",
        "companion 'w': stop_timeout must be a non-negative number of seconds, got -1",
        "companion 'w': stderr 'stderr' is not allowed here; "
        "use a file path, 'stdout' or 'inherit'",
    ]


def test_good_entries_do_not_hide_bad_ones():
    entries = [entry(name="a"), entry(name="b", startsecs=-2), entry(name="c"), entry(name="a")]
    assert problems_of(entries) == [
        "companion 'b': startsecs must be a non-negative number of seconds, got -2",
        "companion_workers[3]: duplicate name 'a' (companion_workers[0] has it too)",
    ]


# -- global companion_<key> defaults ------------------------------------------------


@pytest.mark.parametrize(
    "key, global_value, expected",
    [
        ("stop_signal", "INT", 2),
        ("stop_signal", 9, 9),
        ("stop_timeout", 30, 30.0),
        ("reload_timeout", 0, 0.0),
        ("startsecs", 0.5, 0.5),
        ("restart_delay", 7, 7.0),
        ("stdout", "/tmp/out", "/tmp/out"),
        ("stderr", "stdout", "stdout"),
    ],
)
def test_global_fills_in_key_left_out(key, global_value, expected):
    (spec,) = parse_companions([entry()], {f"companion_{key}": global_value})
    assert getattr(spec, key) == expected


@pytest.mark.parametrize(
    "key, global_value, own, expected",
    [
        ("stop_signal", "INT", "QUIT", 3),
        ("stop_timeout", 30, 2, 2.0),
        ("reload_timeout", 30, 0, 0.0),
        ("startsecs", 5, 0, 0.0),
        ("restart_delay", 7, 1.5, 1.5),
        ("stdout", "/tmp/a", "/tmp/b", "/tmp/b"),
        ("stderr", "stdout", "inherit", "inherit"),
    ],
)
def test_own_key_overrides_global(key, global_value, own, expected):
    a, b = parse_companions(
        [entry(name="a", **{key: own}), entry(name="b")], {f"companion_{key}": global_value}
    )
    assert getattr(a, key) == expected
    assert getattr(b, key) == DEFAULTABLE_KEYS[key][0](global_value)


@pytest.mark.parametrize("key", list(DEFAULTABLE_KEYS))
def test_global_none_means_builtin(key):
    defaults, problems = parse_defaults({f"companion_{key}": None})
    assert problems == []
    assert defaults == parse_defaults({})[0]


def test_builtin_defaults():
    defaults, problems = parse_defaults({})
    assert problems == []
    assert defaults == {
        "stop_signal": 15, "stop_timeout": 10.0, "reload_timeout": None, "startsecs": 1.0,
        "restart_delay": 1.0, "max_restart_delay": 60.0, "startretries": None,
        "stdout": "inherit", "stderr": "inherit", "stdout_maxbytes": 0, "stdout_backups": 10,
        "stderr_maxbytes": 0, "stderr_backups": 10, "timestamps": False,
        "timestamp_format": "%Y-%m-%d %H:%M:%S", "stop_as_group": False,
    }


@pytest.mark.parametrize("entry_keys, values, expected", [
    ({}, {}, (10.0, 10.0)),
    ({"stop_timeout": 1560}, {}, (1560.0, 1560.0)),  # Frappe's long-queue workers
    ({"stop_timeout": 1560, "reload_timeout": 5}, {}, (1560.0, 5.0)),
    ({}, {"companion_stop_timeout": 60}, (60.0, 60.0)),
    ({"stop_timeout": 30}, {"companion_reload_timeout": 4}, (30.0, 4.0)),
    ({"reload_timeout": 0}, {}, (10.0, 0.0)),
    ({"stop_timeout": 30}, {"companion_reload_timeout": None}, (30.0, 30.0)),
])
def test_reload_timeout_follows_stop_timeout_unless_set(entry_keys, values, expected):
    spec = parse_companions([entry(**entry_keys)], values)[0]
    assert (spec.stop_timeout, spec.reload_timeout) == expected


@pytest.mark.parametrize("value, expected", [(True, True), (False, False)])
def test_stop_as_group(value, expected):
    assert parse_companions([entry(stop_as_group=value)])[0].stop_as_group is expected
    assert parse_companions([entry()], {"companion_stop_as_group": value})[0].stop_as_group \
        is expected


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_stop_as_group(value):
    assert only_problem([entry(stop_as_group=value)]) == (
        f"companion 'w': stop_as_group must be True or False, got {value!r}")


def test_unrelated_values_are_ignored():
    assert parse_companions([entry()], {"workers": 4, "bind": ":80", "stop_timeout": -1}) == (
        CompanionSpec(name="w", target="pkg.mod:main"),
    )


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"companion_stop_timeout": -1},
         "companion_stop_timeout: must be a non-negative number of seconds, got -1"),
        ({"companion_stop_timeout": "10s"},
         "companion_stop_timeout: must be a number of seconds, got '10s'"),
        ({"companion_stop_signal": "SIGFOO"},
         "companion_stop_signal: 'SIGFOO' is not a signal name (try 'SIGTERM', 'INT' or 15)"),
        ({"companion_stdout": "stderr"},
         "companion_stdout: 'stderr' is not allowed here; use a file path or 'inherit'"),
        ({"companion_stderr": ""},
         "companion_stderr: must be a file path, 'stdout' or 'inherit', got ''"),
    ],
)
def test_bad_global_default(values, problem):
    # Reported once, under the setting's own name, however many companions use it
    assert problems_of([entry(name="a"), entry(name="b")], values) == [problem]


def test_bad_global_default_reported_even_when_every_companion_overrides_it():
    assert problems_of([entry(stop_timeout=1)], {"companion_stop_timeout": -1}) == [
        "companion_stop_timeout: must be a non-negative number of seconds, got -1"
    ]


def test_bad_global_default_with_no_companions():
    assert problems_of([], {"companion_startsecs": math.nan}) == [
        "companion_startsecs: must be a non-negative number of seconds, got nan"
    ]


# -- equality, which reread relies on ------------------------------------------------


def _one(e, values=None):
    (spec,) = parse_companions([e], values)
    return spec


@pytest.mark.parametrize(
    "a, va, b, vb",
    [
        pytest.param(entry(), {}, entry(), {}, id="same"),
        pytest.param(entry(stop_signal="INT"), {}, entry(stop_signal=2), {}, id="signal-forms"),
        pytest.param(entry(stop_timeout=5), {}, entry(stop_timeout=5.0), {}, id="int-vs-float"),
        pytest.param(entry(env={"A": "1", "B": "2"}), {}, entry(env={"B": "2", "A": "1"}), {},
                     id="env-order"),
        pytest.param(entry(), {"companion_stop_timeout": 5}, entry(stop_timeout=5), {},
                     id="global-vs-own"),
        pytest.param(entry(stop_timeout=3), {"companion_stop_timeout": 5},
                     entry(stop_timeout=3), {"companion_stop_timeout": 9},
                     id="unused-global-changed"),
        pytest.param(entry(), {"companion_stop_timeout": None}, entry(), {}, id="None-global"),
        pytest.param(entry(), {"workers": 1}, entry(), {"workers": 2}, id="unrelated-value"),
    ],
)
def test_specs_equal(a, va, b, vb):
    sa, sb = _one(a, va), _one(b, vb)
    assert sa == sb
    assert hash(sa) == hash(sb)


@pytest.mark.parametrize(
    "a, va, b, vb",
    [
        pytest.param(entry(), {}, entry(target="pkg.mod:other"), {}, id="target"),
        pytest.param(entry(), {}, entry(cwd="/srv"), {}, id="cwd"),
        pytest.param(entry(env={"A": "1"}), {}, entry(env={"A": "2"}), {}, id="env"),
        pytest.param(entry(), {}, entry(stderr="stdout"), {}, id="stderr"),
        pytest.param(entry(), {"companion_stop_timeout": 5}, entry(),
                     {"companion_stop_timeout": 6}, id="global-stop_timeout"),
        pytest.param(entry(), {"companion_stop_signal": "TERM"}, entry(),
                     {"companion_stop_signal": "INT"}, id="global-stop_signal"),
        pytest.param(entry(), {}, entry(), {"companion_startsecs": 0}, id="global-startsecs"),
        pytest.param(entry(), {}, entry(), {"companion_stdout": "/tmp/o"}, id="global-stdout"),
    ],
)
def test_specs_differ(a, va, b, vb):
    assert _one(a, va) != _one(b, vb)


def test_specs_are_frozen():
    spec = _one(entry())
    with pytest.raises(AttributeError):
        spec.stop_timeout = 1.0  # type: ignore[misc]


def test_global_change_affects_only_companions_that_use_it():
    entries = [entry(name="uses"), entry(name="own", restart_delay=2)]
    before = parse_companions(entries, {"companion_restart_delay": 1})
    after = parse_companions(entries, {"companion_restart_delay": 4})
    assert [b == a for b, a in zip(before, after, strict=True)] == [False, True]


# -- ConfigError -------------------------------------------------------------------


@pytest.mark.parametrize(
    "problems, text",
    [
        ("one fault", "invalid companion configuration: one fault"),
        (["one fault"], "invalid companion configuration: one fault"),
        (
            ["a: bad", "b: worse"],
            "invalid companion configuration (2 problems):\n  - a: bad\n  - b: worse",
        ),
        (
            ("x", "y", "z"),
            "invalid companion configuration (3 problems):\n  - x\n  - y\n  - z",
        ),
    ],
)
def test_config_error_str(problems, text):
    exc = ConfigError(problems)
    assert str(exc) == text
    assert exc.problems == ([problems] if isinstance(problems, str) else list(problems))
    assert isinstance(exc.problems, list)


def test_config_error_from_parse_formats_every_problem():
    with pytest.raises(ConfigError) as info:
        parse_companions([entry(startsecs=-1), entry(name="w2", stop_signal="FOO")])
    assert str(info.value) == (
        "invalid companion configuration (2 problems):\n"
        "  - companion 'w': startsecs must be a non-negative number of seconds, got -1\n"
        "  - companion 'w2': stop_signal 'FOO' is not a signal name (try 'SIGTERM', 'INT' or 15)"
    )


def test_config_error_single_problem_from_parse():
    with pytest.raises(ConfigError) as info:
        parse_companions([entry(stop_timout=1)])
    assert str(info.value) == (
        "invalid companion configuration: companion 'w': unknown key 'stop_timout' "
        "(did you mean 'stop_timeout'?)"
    )


# -- the newer keys: built-in values ---------------------------------------------------


def test_newer_keys_builtin_values():
    (spec,) = parse_companions([entry()])
    assert (spec.command, spec.processes, spec.group, spec.instance, spec.group_name) == (
        None, 1, "", 0, "w")
    assert (spec.autostart, spec.singleton, spec.wait_ready) == (True, False, False)
    assert (spec.max_lifetime, spec.max_lifetime_jitter, spec.max_memory,
            spec.watchdog_timeout) == (None, 0.0, None, None)
    assert (spec.startretries, spec.max_restart_delay) == (None, 60.0)


# -- command ---------------------------------------------------------------------------


def command_entry(command, **extra):
    return entry(target=_DROP, command=command, **extra)


@pytest.mark.parametrize(
    "value, argv",
    [
        (["prog"], ("prog",)),
        (("prog", "-x"), ("prog", "-x")),
        (["prog", "-x", "a b", ""], ("prog", "-x", "a b", "")),  # empty later args are fine
        ("prog", ("prog",)),
        ("  prog   -v  ", ("prog", "-v")),
        ("prog -x 'a b'", ("prog", "-x", "a b")),
        ('python -c "print(1)"', ("python", "-c", "print(1)")),
        ("run a\\ b", ("run", "a b")),
        ("/usr/bin/env FOO=1 x", ("/usr/bin/env", "FOO=1", "x")),
        ("prog '$HOME' $HOME", ("prog", "$HOME", "$HOME")),  # split, never expanded
    ],
)
def test_command_accepted(value, argv):
    assert validate_command(value) == argv
    (spec,) = parse_companions([command_entry(value)])
    assert (spec.command, spec.target) == (argv, None)
    assert type(spec.command) is tuple


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "must name a program to run, got []"),
        ((), "must name a program to run, got ()"),
        ("", "must name a program to run, got ''"),
        ("   ", "must name a program to run, got '   '"),
        ([""], "must name a program to run, got ['']"),
        (["", "x"], "must name a program to run, got ['', 'x']"),
        ("'' x", "must name a program to run, got \"'' x\""),
        (["prog", 5], "arguments must be strings, got 5"),
        (["prog", None], "arguments must be strings, got None"),
        (["prog", b"x"], "arguments must be strings, got b'x'"),
        (["prog", ["x"]], "arguments must be strings, got ['x']"),
        ([1, 2], "arguments must be strings, got 1"),
        (["prog", "a\0b"], "arguments must be strings, got 'a\\x00b'"),
        ("prog 'a b", "\"prog 'a b\" cannot be split into arguments: No closing quotation"),
        ('prog "a b', "'prog \"a b' cannot be split into arguments: No closing quotation"),
        ("prog \\", "'prog \\\\' cannot be split into arguments: No escaped character"),
        (5, "must be a list of arguments or a string, got 5"),
        (None, "must be a list of arguments or a string, got None"),
        ({"prog": "x"}, "must be a list of arguments or a string, got {'prog': 'x'}"),
        (b"prog", "must be a list of arguments or a string, got b'prog'"),
    ],
)
def test_command_rejected(value, message):
    with pytest.raises(ValueError) as info:
        validate_command(value)
    assert str(info.value) == message
    assert only_problem([command_entry(value)]) == f"companion 'w': command {message}"


def test_command_string_with_nul_is_rejected_like_a_list():
    with pytest.raises(ValueError):
        validate_command("prog a\0b")


def test_command_forms_make_equal_specs():
    a = _one(command_entry("prog -x 'a b'"))
    b = _one(command_entry(["prog", "-x", "a b"]))
    assert a == b and hash(a) == hash(b)
    assert a != _one(command_entry(["prog", "-x", "a", "b"]))


# -- target xor command -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, problems",
    [
        pytest.param(entry(target=_DROP),
                     ["companion 'w': missing 'target' (a 'module:callable') or 'command' "
                      "(a program to run)"], id="neither"),
        pytest.param(entry(command="prog"),
                     ["companion 'w': has both 'target' and 'command'; use one"], id="both"),
        pytest.param(entry(command=[]),
                     ["companion 'w': has both 'target' and 'command'; use one",
                      "companion 'w': command must name a program to run, got []"],
                     id="both-and-bad-command"),
        pytest.param(entry(target="nope", command="prog"),
                     ["companion 'w': has both 'target' and 'command'; use one",
                      "companion 'w': 'target' 'nope' must look like 'module:callable'"],
                     id="both-and-bad-target"),
        pytest.param(entry(target=None, command=None),
                     ["companion 'w': has both 'target' and 'command'; use one",
                      "companion 'w': 'target' must be a non-empty string, got None",
                      "companion 'w': command must be a list of arguments or a string, got None"],
                     id="both-None"),
        pytest.param({"command": "prog"}, ["companion_workers[0]: missing 'name'"],
                     id="command-without-name"),
    ],
)
def test_target_xor_command(bad, problems):
    assert problems_of([bad]) == problems


def test_target_and_command_companions_side_by_side():
    a, b = parse_companions([entry(name="a"), command_entry("prog", name="b")])
    assert (a.target, a.command, b.target, b.command) == ("pkg.mod:main", None, None, ("prog",))


# -- processes --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 10])
def test_processes_expand_into_instances(count):
    specs = parse_companions([entry(name="rq", processes=count, stop_timeout=3)])
    assert [s.name for s in specs] == [f"rq:{i}" for i in range(count)]
    assert [s.instance for s in specs] == list(range(count))
    assert {(s.group, s.group_name, s.processes) for s in specs} == {("rq", "rq", count)}
    # every instance is the same companion otherwise
    assert {replace_identity(s) for s in specs} == {
        CompanionSpec(name="rq", target="pkg.mod:main", stop_timeout=3.0, processes=count)
    }


def replace_identity(spec: CompanionSpec) -> CompanionSpec:
    """The instance with its identity taken away: what every instance shares."""
    return replace(spec, name=spec.group_name, group="", instance=0)


def test_processes_one_keeps_the_plain_name():
    (spec,) = parse_companions([entry(name="rq", processes=1)])
    assert (spec.name, spec.group, spec.instance, spec.group_name, spec.processes) == (
        "rq", "", 0, "rq", 1)
    assert spec == _one(entry(name="rq"))


def test_processes_keep_entry_order():
    specs = parse_companions([entry(name="a", processes=2), entry(name="b"),
                              entry(name="c", processes=2)])
    assert [(s.name, s.group_name) for s in specs] == [
        ("a:0", "a"), ("a:1", "a"), ("b", "b"), ("c:0", "c"), ("c:1", "c")]


def test_processes_upper_bound():
    specs = parse_companions([entry(processes=1000)])
    assert (len(specs), specs[0].name, specs[-1].name, specs[-1].instance) == (
        1000, "w:0", "w:999", 999)
    assert len({s.name for s in specs}) == 1000


def test_processes_duplicate_names_are_checked_by_configured_name():
    assert problems_of([entry(name="rq", processes=2), entry(name="rq")]) == [
        "companion_workers[1]: duplicate name 'rq' (companion_workers[0] has it too)"]


@pytest.mark.parametrize("value", [0, -1, 1001, 10**6, True, False, 1.0, 2.5, "2", None, [2]])
def test_processes_rejected(value):
    message = f"must be a whole number from 1 to 1000, got {value!r}"
    with pytest.raises(ValueError) as info:
        validate_processes(value)
    assert str(info.value) == message
    assert only_problem([entry(processes=value)]) == f"companion 'w': processes {message}"


# -- autostart, singleton, wait_ready ------------------------------------------------------

BOOL_KEYS = ("autostart", "singleton", "wait_ready")


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("value", [True, False])
def test_bool_keys_accepted(key, value):
    assert validate_bool(value) is value
    assert getattr(_one(entry(**{key: value})), key) is value


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("value", [1, 0, "yes", "true", "False", None, 1.0, []])
def test_bool_keys_rejected(key, value):
    allowed = 'True, False, "host" or "fleet"' if key == "singleton" else "True or False"
    assert only_problem([entry(**{key: value})]) == (
        f"companion 'w': {key} must be {allowed}, got {value!r}")


# -- max_lifetime and watchdog_timeout: positive seconds or None ---------------------------

POSITIVE_KEYS = ("max_lifetime", "watchdog_timeout")


@pytest.mark.parametrize("key", POSITIVE_KEYS)
@pytest.mark.parametrize("value", [None, 1, 0.5, 3600, 1e-3, 10**6])
def test_positive_seconds_accepted(key, value):
    expected = None if value is None else float(value)
    assert validate_optional_positive_seconds(value) == expected
    got = getattr(_one(entry(**{key: value})), key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("key", POSITIVE_KEYS)
@pytest.mark.parametrize(
    "value, message",
    [
        (0, "must be a positive number of seconds, got 0"),
        (0.0, "must be a positive number of seconds, got 0.0"),
        (-1, "must be a non-negative number of seconds, got -1"),
        (math.inf, "must be a non-negative number of seconds, got inf"),
        (math.nan, "must be a non-negative number of seconds, got nan"),
        (True, "must be a number of seconds, got True"),
        (False, "must be a number of seconds, got False"),
        ("1h", "must be a number of seconds, got '1h'"),
    ],
)
def test_positive_seconds_rejected(key, value, message):
    assert only_problem([entry(**{key: value})]) == f"companion 'w': {key} {message}"


# -- max_lifetime_jitter: seconds >= 0 ---------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 2.5, 600])
def test_max_lifetime_jitter_accepted(value):
    got = _one(entry(max_lifetime=60, max_lifetime_jitter=value)).max_lifetime_jitter
    assert got == float(value) and type(got) is float


@pytest.mark.parametrize("value, message", BAD_SECONDS)
def test_max_lifetime_jitter_rejected(value, message):
    assert only_problem([entry(max_lifetime_jitter=value)]) == (
        f"companion 'w': max_lifetime_jitter {message}")


def test_max_lifetime_jitter_has_no_global():
    # not a defaultable key: a companion_max_lifetime_jitter value is just unrelated
    assert "max_lifetime_jitter" not in DEFAULTABLE_KEYS
    assert _one(entry(), {"companion_max_lifetime_jitter": 5}).max_lifetime_jitter == 0.0


# -- max_memory: validate_size ----------------------------------------------------------------

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    "value, size",
    [
        (None, None),
        (1, 1),
        (4096, 4096),
        (2 * GiB, 2 * GiB),
        ("1", 1),
        ("100b", 100),
        ("100B", 100),
        ("800k", 800 * KiB),
        ("800K", 800 * KiB),
        ("800kb", 800 * KiB),
        ("800KiB", 800 * KiB),
        ("512MB", 512 * MiB),
        ("512mb", 512 * MiB),
        ("512Mb", 512 * MiB),
        ("512M", 512 * MiB),
        ("512 MB", 512 * MiB),
        ("  512MB  ", 512 * MiB),
        ("512MiB", 512 * MiB),
        ("1.5G", int(1.5 * GiB)),
        ("1.5g", int(1.5 * GiB)),
        ("2GiB", 2 * GiB),
        ("2gib", 2 * GiB),
        ("2GIB", 2 * GiB),
        ("0.5G", 512 * MiB),
        ("1.1k", 1126),  # whole bytes, rounded down
        ("1T", TiB),
        ("3tb", 3 * TiB),
    ],
)
def test_size_accepted(value, size):
    assert validate_size(value) == size
    got = _one(entry(max_memory=value)).max_memory
    assert got == size and (got is None or type(got) is int)


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "must be more than 0 bytes, got 0"),
        (-1, "must be more than 0 bytes, got -1"),
        ("0", "must be more than 0 bytes, got '0'"),
        ("0MB", "must be more than 0 bytes, got '0MB'"),
        ("0.0001k", "must be more than 0 bytes, got '0.0001k'"),  # rounds down to 0 bytes
        (True, "must be a size like '512MB' or a number of bytes, got True"),
        (False, "must be a size like '512MB' or a number of bytes, got False"),
        (1.5, "must be a size like '512MB' or a number of bytes, got 1.5"),
        (1e9, "must be a size like '512MB' or a number of bytes, got 1000000000.0"),
        ("12XB", "must be a size like '512MB' or a number of bytes, got '12XB'"),
        ("", "must be a size like '512MB' or a number of bytes, got ''"),
        ("   ", "must be a size like '512MB' or a number of bytes, got '   '"),
        ("MB", "must be a size like '512MB' or a number of bytes, got 'MB'"),
        ("-5MB", "must be a size like '512MB' or a number of bytes, got '-5MB'"),
        ("5PB", "must be a size like '512MB' or a number of bytes, got '5PB'"),
        ("1,5G", "must be a size like '512MB' or a number of bytes, got '1,5G'"),
        ("1e9", "must be a size like '512MB' or a number of bytes, got '1e9'"),
        ("5 M B", "must be a size like '512MB' or a number of bytes, got '5 M B'"),
        (".5G", "must be a size like '512MB' or a number of bytes, got '.5G'"),
        ("512MBs", "must be a size like '512MB' or a number of bytes, got '512MBs'"),
        ([512], "must be a size like '512MB' or a number of bytes, got [512]"),
    ],
)
def test_size_rejected(value, message):
    with pytest.raises(ValueError) as info:
        validate_size(value)
    assert str(info.value) == message
    assert only_problem([entry(max_memory=value)]) == f"companion 'w': max_memory {message}"


def test_size_forms_make_equal_specs():
    assert _one(entry(max_memory="512MB")) == _one(entry(max_memory=512 * MiB)) == _one(
        entry(max_memory="0.5g"))


# -- startretries and max_restart_delay: defaultable ---------------------------------------


@pytest.mark.parametrize("value", [None, 0, 1, 3, 1000])
def test_startretries_accepted(value):
    assert validate_startretries(value) == value
    assert _one(entry(startretries=value)).startretries == value


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, -1, "3", [3]])
def test_startretries_rejected(value):
    message = f"must be a whole number >= 0 (or None for no limit), got {value!r}"
    with pytest.raises(ValueError) as info:
        validate_startretries(value)
    assert str(info.value) == message
    assert only_problem([entry(startretries=value)]) == f"companion 'w': startretries {message}"
    assert only_problem([entry()], {"companion_startretries": value}) == (
        f"companion_startretries: {message}")


def test_defaultable_keys_include_the_crash_loop_knobs():
    assert set(DEFAULTABLE_KEYS) >= {"startretries", "max_restart_delay"}
    assert DEFAULTABLE_KEYS["startretries"][1] is None
    assert DEFAULTABLE_KEYS["max_restart_delay"][1] == 60.0


@pytest.mark.parametrize(
    "values, own, startretries, max_restart_delay",
    [
        ({}, {}, None, 60.0),
        ({"companion_startretries": 3}, {}, 3, 60.0),
        ({"companion_startretries": 0}, {}, 0, 60.0),
        ({"companion_max_restart_delay": 120}, {}, None, 120.0),
        ({"companion_startretries": None, "companion_max_restart_delay": None}, {}, None, 60.0),
        ({"companion_startretries": 3}, {"startretries": 5}, 5, 60.0),
        # an own None means "no limit" even when the global sets one
        ({"companion_startretries": 3}, {"startretries": None}, None, 60.0),
        ({"companion_max_restart_delay": 120}, {"max_restart_delay": 0}, None, 0.0),
    ],
)
def test_crash_loop_globals(values, own, startretries, max_restart_delay):
    spec = _one(entry(**own), values)
    assert (spec.startretries, spec.max_restart_delay) == (startretries, max_restart_delay)
    assert type(spec.max_restart_delay) is float


def test_crash_loop_global_applies_to_every_instance():
    specs = parse_companions([entry(processes=3)], {"companion_startretries": 2})
    assert [s.startretries for s in specs] == [2, 2, 2]


# -- every problem of the newer keys at once ----------------------------------------------


def test_every_newer_key_fault_is_reported_in_key_order():
    bad = {
        "name": "w",
        "target": "pkg.mod:main",
        "command": "prog 'x",
        "processes": 0,
        "autostart": "yes",
        "singleton": 1,
        "wait_ready": None,
        "max_lifetime": 0,
        "max_lifetime_jitter": -1,
        "max_memory": "12XB",
        "watchdog_timeout": True,
        "max_restart_delay": -5,
        "startretries": 1.5,
        "processess": 2,
    }
    assert problems_of([bad], {"companion_max_restart_delay": "1m"}) == [
        "companion_max_restart_delay: must be a number of seconds, got '1m'",
        "companion 'w': unknown key 'processess' (did you mean 'processes'?)",
        "companion 'w': has both 'target' and 'command'; use one",
        "companion 'w': command \"prog 'x\" cannot be split into arguments: No closing quotation",
        "companion 'w': processes must be a whole number from 1 to 1000, got 0",
        "companion 'w': autostart must be True or False, got 'yes'",
        'companion \'w\': singleton must be True, False, "host" or "fleet", got 1',
        "companion 'w': wait_ready must be True or False, got None",
        "companion 'w': max_lifetime must be a positive number of seconds, got 0",
        "companion 'w': max_lifetime_jitter must be a non-negative number of seconds, got -1",
        "companion 'w': max_memory must be a size like '512MB' or a number of bytes, got '12XB'",
        "companion 'w': watchdog_timeout must be a number of seconds, got True",
        "companion 'w': max_restart_delay must be a non-negative number of seconds, got -5",
        "companion 'w': startretries must be a whole number >= 0 (or None for no limit), "
        "got 1.5",
    ]


@pytest.mark.parametrize(
    "a, b",
    [
        pytest.param(entry(), command_entry("prog"), id="target-vs-command"),
        pytest.param(command_entry("prog a"), command_entry("prog b"), id="command"),
        pytest.param(entry(), entry(processes=2), id="processes"),
        pytest.param(entry(), entry(autostart=False), id="autostart"),
        pytest.param(entry(), entry(singleton=True), id="singleton"),
        pytest.param(entry(), entry(wait_ready=True), id="wait_ready"),
        pytest.param(entry(), entry(max_lifetime=60), id="max_lifetime"),
        pytest.param(entry(), entry(max_lifetime_jitter=5), id="max_lifetime_jitter"),
        pytest.param(entry(), entry(max_memory="1G"), id="max_memory"),
        pytest.param(entry(), entry(watchdog_timeout=5), id="watchdog_timeout"),
        pytest.param(entry(), entry(startretries=3), id="startretries"),
        pytest.param(entry(), entry(max_restart_delay=5), id="max_restart_delay"),
    ],
)
def test_newer_keys_make_specs_differ(a, b):
    # a reread must notice any of them changed
    (sa,), specs_b = parse_companions([a]), parse_companions([b])
    assert sa != specs_b[0]


# -- output rotation and timestamps: *_maxbytes, *_backups, timestamp_format ------------

STREAMS = ("stdout", "stderr")


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize(
    "value, size",
    [(0, 0), ("0", 0), (1, 1), (1024, 1024), ("50MB", 50 * MiB), ("1k", 1024),
     ("1.5M", 3 * MiB // 2), (" 2g ", 2 * 1024 * MiB)],
)
def test_maxbytes_accepted(stream, value, size):
    assert validate_maxbytes(value) == size
    assert getattr(_one(entry(**{f"{stream}_maxbytes": value})), f"{stream}_maxbytes") == size


MAXBYTES_MESSAGE = "must be 0 (never rotate), a number of bytes or a size like '50MB', got "


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("value", [-1, "-1", "50XB", "", None, True, False, 1.5, "MB", [1]])
def test_maxbytes_rejected(stream, value):
    with pytest.raises(ValueError, match=r"^must be 0 \(never rotate\)"):
        validate_maxbytes(value)
    assert only_problem([entry(**{f"{stream}_maxbytes": value})]) == (
        f"companion 'w': {stream}_maxbytes {MAXBYTES_MESSAGE}{value!r}")


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("value", [0, 1, 10, 1000])
def test_backups_accepted(stream, value):
    assert validate_backups(value) == value
    assert getattr(_one(entry(**{f"{stream}_backups": value})), f"{stream}_backups") == value


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("value", [-1, 1.0, "3", None, True, False])
def test_backups_rejected(stream, value):
    with pytest.raises(ValueError):
        validate_backups(value)
    assert only_problem([entry(**{f"{stream}_backups": value})]) == (
        f"companion 'w': {stream}_backups must be a whole number >= 0, got {value!r}")


@pytest.mark.parametrize("value", ["%Y-%m-%d %H:%M:%S", "%s", "[%H:%M]", "plain text", "%%"])
def test_timestamp_format_accepted(value):
    assert validate_timestamp_format(value) == value
    assert _one(entry(timestamp_format=value)).timestamp_format == value


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "must be a strftime format like '%Y-%m-%d %H:%M:%S', got ''"),
        (None, "must be a strftime format like '%Y-%m-%d %H:%M:%S', got None"),
        (b"%Y", "must be a strftime format like '%Y-%m-%d %H:%M:%S', got b'%Y'"),
        ("a\0b", "'a\\x00b' is not a valid strftime format: embedded null character"),
    ],
)
def test_timestamp_format_rejected(value, message):
    with pytest.raises(ValueError):
        validate_timestamp_format(value)
    assert only_problem([entry(timestamp_format=value)]) == (
        f"companion 'w': timestamp_format {message}")


@pytest.mark.parametrize(
    "key, value",
    [("stdout_maxbytes", "1k"), ("stderr_maxbytes", "1k"), ("stdout_backups", 2),
     ("stderr_backups", 2), ("timestamp_format", "%H")],
)
def test_rotation_and_timestamp_keys_have_globals(key, value):
    (spec,) = parse_companions([entry()], {f"companion_{key}": value})
    assert getattr(spec, key) == (1024 if value == "1k" else value)
    assert parse_defaults({f"companion_{key}": -1})[1] == [
        f"companion_{key}: " + str(_error_of(DEFAULTABLE_KEYS[key][0], -1))]


def _error_of(validator, value) -> ValueError:
    with pytest.raises(ValueError) as info:
        validator(value)
    return info.value
