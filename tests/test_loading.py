"""Tests for loading.py: where the companion settings come from.

Small config files are written into tmp_path and read through
``load_companion_config``, the one path used at boot and on reread.
"""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

from gunicorn_companion import settings
from gunicorn_companion.loading import (
    SPEC_SETTINGS,
    CompanionConfig,
    ConfigSources,
    load_companion_config,
)
from gunicorn_companion.spec import CompanionSpec, ConfigError

KNOWN = tuple(settings.COMPANION_SETTINGS)
MANAGER_LEVEL = tuple(name for name in KNOWN if name not in SPEC_SETTINGS)


def write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def load(main_file=None, inline=None, overrides=None) -> CompanionConfig:
    return load_companion_config(ConfigSources(
        main_file=main_file, inline=inline or {}, overrides=overrides or {}, known=KNOWN,
    ))


def problems(**kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(**kw)
    return info.value.problems


MAIN = """
bind = "127.0.0.1:8000"
workers = 2
companion_stop_timeout = 5
companion_workers = [
    {"name": "sched", "target": "app.jobs:run"},
    {"name": "queue", "target": "app.queue:work", "stop_timeout": 1},
]
"""


@pytest.fixture
def main(tmp_path):
    return write(tmp_path / "gunicorn.conf.py", MAIN)


def test_known_names_cover_the_spec_settings():
    assert set(SPEC_SETTINGS) < set(KNOWN)
    assert set(MANAGER_LEVEL) >= {"companion_config_file", "companion_control_socket"}


# -- the main file ----------------------------------------------------------------


def test_main_file(main):
    config = load(main_file=main)
    assert config.config_file is None
    assert config.specs == (
        CompanionSpec(name="sched", target="app.jobs:run", stop_timeout=5.0),
        CompanionSpec(name="queue", target="app.queue:work", stop_timeout=1.0),
    )
    assert list(config.by_name()) == ["sched", "queue"]
    assert config.by_name()["queue"].stop_timeout == 1.0


@pytest.mark.parametrize("prefix", ["", "file:"])
def test_main_file_location_forms(main, prefix):
    assert [s.name for s in load(main_file=prefix + main).specs] == ["sched", "queue"]


def test_main_file_without_companions(tmp_path):
    main = write(tmp_path / "g.py", "bind = ':80'\n")
    assert load(main_file=main) == CompanionConfig()


def test_non_companion_names_are_ignored(tmp_path):
    main = write(tmp_path / "g.py", """
        import os
        workers = 4
        stop_timout = 3                 # not a companion_* name: Gunicorn's business
        companion = "x"                 # no underscore: not ours either
        _companion_private = 1
        Companion_stop_timeout = -1     # case matters
        def on_starting(server):
            pass
        companion_workers = [{"name": "w", "target": "m:f"}]
    """)
    assert load(main_file=main).specs == (CompanionSpec(name="w", target="m:f"),)


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("companion_stop_timout", " (did you mean 'companion_stop_timeout'?)"),
        ("companion_worker", " (did you mean 'companion_workers'?)"),
        ("companion_config", " (did you mean 'companion_config_file'?)"),
        ("companion_control_sock", " (did you mean 'companion_control_socket'?)"),
        ("companion_startsec", " (did you mean 'companion_startsecs'?)"),
    ],
)
def test_typo_in_main_file(tmp_path, name, suggestion):
    main = write(tmp_path / "g.py", f"""
        {name} = 3
        companion_workers = [{{"name": "w", "target": "m:f"}}]
    """)
    assert problems(main_file=main) == [f"{main}: unknown setting {name!r}{suggestion}"]


@pytest.mark.parametrize("name", ["companion_zzz", "companion_user", "companion_max_requests"])
def test_unknown_setting_without_a_close_match_is_still_reported(tmp_path, name):
    main = write(tmp_path / "g.py", f"{name} = 1\n")
    (problem,) = problems(main_file=main)
    assert problem.startswith(f"{main}: unknown setting {name!r}")


@pytest.mark.parametrize("name", ["companion_zzz", "companion_user", "companion_max_requests"])
def test_unknown_setting_without_a_close_match_gets_no_suggestion(tmp_path, name):
    main = write(tmp_path / "g.py", f"{name} = 1\n")
    assert problems(main_file=main) == [f"{main}: unknown setting {name!r}"]


def test_typo_and_bad_entry_are_reported_together(tmp_path):
    main = write(tmp_path / "g.py", """
        companion_stop_timout = 3
        companion_workers = [{"name": "w", "target": "m:f", "startsecs": -1}, "x"]
    """)
    assert problems(main_file=main) == [
        f"{main}: unknown setting 'companion_stop_timout' (did you mean 'companion_stop_timeout'?)",
        "companion 'w': startsecs must be a non-negative number of seconds, got -1",
        "companion_workers[1] must be a dict, got str",
    ]


@pytest.mark.parametrize("name", MANAGER_LEVEL)
def test_manager_level_settings_are_allowed_in_the_main_file(tmp_path, name):
    value = "None" if name != "companion_config_file" else "''"
    main = write(tmp_path / "g.py", f"""
        {name} = {value}
        companion_workers = [{{"name": "w", "target": "m:f"}}]
    """)
    assert [s.name for s in load(main_file=main).specs] == ["w"]


# -- files that cannot be read ------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, msg",
    [
        ("companion_workers = [\n    {'name': 'w' 'target': 'm:f'},\n]\n", 2, None),
        ("x = 1\ny = = 2\n", 2, "invalid syntax"),
        ("def f(:\n    pass\n", 1, None),
        ("companion_workers = [\n", 1, None),
        ("a = 1\nb = 2\n  c = 3\n", 3, "unexpected indent"),
    ],
    ids=["missing-comma", "double-equals", "bad-def", "unclosed", "indent"],
)
def test_syntax_error(tmp_path, text, line, msg):
    path = tmp_path / "g.py"
    path.write_text(text)
    (problem,) = problems(main_file=str(path))
    assert problem.startswith(f"cannot read config file {str(path)!r}: SyntaxError: ")
    assert problem.endswith(f"(line {line})")
    if msg:
        assert msg in problem


@pytest.mark.parametrize(
    "body, error",
    [
        ("raise RuntimeError('boom')", "RuntimeError: boom"),
        ("import no_such_module_for_companion_tests",
         "ModuleNotFoundError: No module named 'no_such_module_for_companion_tests'"),
        ("companion_workers = undefined_name", "NameError: name 'undefined_name' is not defined"),
        ("x = 1 / 0", "ZeroDivisionError: division by zero"),
        ("import sys; sys.exit(3)", "SystemExit: 3"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt: "),
    ],
    ids=["raises", "bad-import", "name-error", "zero-division", "sys.exit", "interrupt"],
)
def test_file_that_raises(tmp_path, body, error):
    main = write(tmp_path / "g.py", body + "\n")
    assert problems(main_file=main) == [f"cannot read config file {main!r}: {error}"]


@pytest.mark.parametrize("prefix", ["", "file:"])
def test_missing_main_file(tmp_path, prefix):
    path = str(tmp_path / "nope.py")
    assert problems(main_file=prefix + path) == [f"config file {path!r} does not exist"]


def test_read_error_is_one_config_error_with_a_readable_message(tmp_path):
    main = write(tmp_path / "g.py", "raise ValueError('no')\n")
    with pytest.raises(ConfigError) as info:
        load(main_file=main)
    assert str(info.value) == (
        f"invalid companion configuration: cannot read config file {main!r}: ValueError: no"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__


# -- companion_config_file ------------------------------------------------------------


COMPANION_FILE = """
companion_restart_delay = 9
companion_workers = [{"name": "other", "target": "app.other:run"}]
"""


def test_companion_config_file_replaces_main_companion_settings(tmp_path):
    cfile = write(tmp_path / "companions.py", COMPANION_FILE)
    main = write(tmp_path / "g.py", MAIN + f"companion_config_file = {cfile!r}\n")
    config = load(main_file=main)
    assert config.config_file == cfile
    # only the file's companions, and the main file's companion_stop_timeout
    # (5) is gone with them: the built-in 10 applies
    assert config.specs == (
        CompanionSpec(name="other", target="app.other:run", restart_delay=9.0, stop_timeout=10.0),
    )


def test_companion_config_file_without_workers_means_none(tmp_path):
    cfile = write(tmp_path / "companions.py", "companion_startsecs = 0\n")
    main = write(tmp_path / "g.py", MAIN + f"companion_config_file = {cfile!r}\n")
    assert load(main_file=main) == CompanionConfig(specs=(), config_file=cfile)


@pytest.mark.parametrize("name", MANAGER_LEVEL)
def test_manager_level_setting_refused_in_companion_file(tmp_path, name):
    cfile = write(tmp_path / "companions.py", COMPANION_FILE + f"{name} = '/tmp/x'\n")
    main = write(tmp_path / "g.py", f"companion_config_file = {cfile!r}\n")
    assert problems(main_file=main) == [
        f"{cfile}: {name} cannot be set here; set it in the main config"
    ]


def test_typo_in_companion_file(tmp_path):
    cfile = write(tmp_path / "companions.py", COMPANION_FILE + "companion_stop_timout = 1\n")
    main = write(tmp_path / "g.py", f"companion_config_file = {cfile!r}\n")
    assert problems(main_file=main) == [
        f"{cfile}: unknown setting 'companion_stop_timout' (did you mean 'companion_stop_timeout'?)"
    ]


def test_problems_from_both_files_and_the_entries_come_together(tmp_path):
    cfile = write(tmp_path / "companions.py", """
        companion_control_socket = "/run/x.sock"
        companion_workers = [{"name": "w", "target": "nocolon"}]
    """)
    main = write(tmp_path / "g.py", f"""
        companion_restart_dely = 1
        companion_config_file = {cfile!r}
    """)
    assert problems(main_file=main) == [
        f"{main}: unknown setting 'companion_restart_dely' "
        "(did you mean 'companion_restart_delay'?)",
        f"{cfile}: companion_control_socket cannot be set here; set it in the main config",
        "companion 'w': 'target' 'nocolon' must look like 'module:callable'",
    ]


@pytest.mark.parametrize(
    "text, error",
    [
        ("x = = 1\n", "SyntaxError: invalid syntax (line 1)"),
        ("raise OSError('disk')\n", "OSError: disk"),
    ],
)
def test_unreadable_companion_file(tmp_path, text, error):
    cfile = write(tmp_path / "companions.py", text)
    main = write(tmp_path / "g.py", f"companion_config_file = {cfile!r}\n")
    assert problems(main_file=main) == [f"cannot read config file {cfile!r}: {error}"]


def test_missing_companion_file(tmp_path):
    cfile = str(tmp_path / "gone.py")
    main = write(tmp_path / "g.py", f"companion_config_file = {cfile!r}\n")
    assert problems(main_file=main) == [f"config file {cfile!r} does not exist"]


@pytest.mark.parametrize("value", ["None", "''"])
def test_empty_companion_config_file_is_off(tmp_path, value):
    main = write(tmp_path / "g.py", MAIN + f"companion_config_file = {value}\n")
    config = load(main_file=main)
    assert config.config_file is None
    assert [s.name for s in config.specs] == ["sched", "queue"]


# -- overrides (the command line) -------------------------------------------------------


def test_overrides_win_over_the_main_file(main):
    config = load(main_file=main, overrides={"companion_stop_timeout": 7.0})
    assert [s.stop_timeout for s in config.specs] == [7.0, 1.0]  # queue sets its own


def test_overrides_win_over_the_companion_file(tmp_path):
    cfile = write(tmp_path / "companions.py", COMPANION_FILE)
    main = write(tmp_path / "g.py", f"companion_config_file = {cfile!r}\n")
    config = load(main_file=main, overrides={"companion_restart_delay": 2.0,
                                             "companion_startsecs": 0.0})
    assert config.specs == (
        CompanionSpec(name="other", target="app.other:run", restart_delay=2.0, startsecs=0.0),
    )


def test_override_names_the_companion_file(tmp_path, main):
    cfile = write(tmp_path / "companions.py", COMPANION_FILE)
    config = load(main_file=main, overrides={"companion_config_file": cfile})
    assert config.config_file == cfile
    assert [s.name for s in config.specs] == ["other"]


def test_override_of_workers_wins_over_both_files(tmp_path):
    cfile = write(tmp_path / "companions.py", COMPANION_FILE)
    main = write(tmp_path / "g.py", MAIN + f"companion_config_file = {cfile!r}\n")
    workers = [{"name": "cli", "target": "m:f"}]
    config = load(main_file=main, overrides={"companion_workers": workers})
    assert [(s.name, s.restart_delay) for s in config.specs] == [("cli", 9.0)]


def test_bad_override_is_reported(main):
    assert problems(main_file=main, overrides={"companion_stop_signal": "SIGFOO"}) == [
        "companion_stop_signal: 'SIGFOO' is not a signal name (try 'SIGTERM', 'INT' or 15)"
    ]


# -- inline (settings given in code) ----------------------------------------------------


INLINE = {
    "companion_workers": [{"name": "w", "target": "m:f"}],
    "companion_startsecs": 0,
    "companion_config_file": None,
    "companion_control_socket": None,
    "workers": 3,
}


def test_inline_used_without_a_main_file():
    assert load(inline=INLINE).specs == (CompanionSpec(name="w", target="m:f", startsecs=0.0),)


def test_inline_ignored_when_there_is_a_main_file(main):
    config = load(main_file=main, inline=INLINE)
    assert [s.name for s in config.specs] == ["sched", "queue"]


def test_overrides_win_over_inline():
    config = load(inline=INLINE, overrides={"companion_startsecs": 4})
    assert config.specs[0].startsecs == 4.0


def test_inline_companion_config_file(tmp_path):
    cfile = write(tmp_path / "companions.py", COMPANION_FILE)
    config = load(inline={**INLINE, "companion_config_file": cfile})
    assert config.config_file == cfile
    assert config.specs == (
        CompanionSpec(name="other", target="app.other:run", restart_delay=9.0),
    )


def test_inline_bad_entries():
    assert problems(inline={"companion_workers": [{"name": "w"}]}) == [
        "companion 'w': missing 'target' (a 'module:callable') or 'command' "
        "(a program to run)"
    ]


def test_nothing_at_all():
    assert load() == CompanionConfig()
    assert load_companion_config(ConfigSources()) == CompanionConfig()


# -- python:module locations --------------------------------------------------------------


@pytest.fixture
def module(tmp_path, monkeypatch):
    """make(text) -> importable module name in tmp_path, forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    made = []

    def make(text: str) -> str:
        name = f"companion_cfg_{uuid.uuid4().hex}"
        write(tmp_path / f"{name}.py", text)
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


def test_python_module_main_file(module):
    name = module(MAIN)
    config = load(main_file=f"python:{name}")
    assert [(s.name, s.stop_timeout) for s in config.specs] == [("sched", 5.0), ("queue", 1.0)]


def test_python_module_companion_file(module, tmp_path):
    name = module(COMPANION_FILE)
    main = write(tmp_path / "g.py", f"companion_config_file = 'python:{name}'\n")
    config = load(main_file=main)
    assert config.config_file == f"python:{name}"
    assert [s.name for s in config.specs] == ["other"]


def test_python_module_typo(module):
    name = module("companion_stop_timout = 1\n")
    assert problems(main_file=f"python:{name}") == [
        f"python:{name}: unknown setting 'companion_stop_timout' "
        "(did you mean 'companion_stop_timeout'?)"
    ]


def test_python_module_manager_setting_refused_in_companion_file(module, tmp_path):
    name = module(COMPANION_FILE + "companion_control_socket = '/run/c.sock'\n")
    main = write(tmp_path / "g.py", f"companion_config_file = 'python:{name}'\n")
    assert problems(main_file=main) == [
        f"python:{name}: companion_control_socket cannot be set here; set it in the main config"
    ]


def test_python_module_missing():
    name = f"companion_cfg_missing_{uuid.uuid4().hex}"
    assert problems(main_file=f"python:{name}") == [
        f"cannot read config file 'python:{name}': ModuleNotFoundError: No module named {name!r}"
    ]


def test_python_module_with_syntax_error(module):
    name = module("a = 1\nb = (\n")
    (problem,) = problems(main_file=f"python:{name}")
    assert problem.startswith(f"cannot read config file 'python:{name}': SyntaxError: ")
    assert problem.endswith("(line 2)")


def test_python_module_is_read_again_on_reread(module, tmp_path):
    name = module("companion_workers = [{'name': 'w', 'target': 'm:f'}]\n")
    assert [s.name for s in load(main_file=f"python:{name}").specs] == ["w"]
    write(tmp_path / f"{name}.py", "companion_workers = [{'name': 'edited', 'target': 'm:f'}]\n")
    assert [s.name for s in load(main_file=f"python:{name}").specs] == ["edited"]


def test_file_config_is_read_again_on_reread(tmp_path):
    main = write(tmp_path / "g.py", "companion_workers = [{'name': 'w', 'target': 'm:f'}]\n")
    assert [s.name for s in load(main_file=main).specs] == ["w"]
    write(tmp_path / "g.py", "companion_workers = [{'name': 'edited', 'target': 'm:f'}]\n")
    assert [s.name for s in load(main_file=main).specs] == ["edited"]
