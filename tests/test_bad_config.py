"""Every bad configuration stops the boot with one clear message and leaves nothing running."""

import subprocess
import textwrap

import pytest
from support import Server

GOOD = '{"name": "ok", "target": "compapp:sleeper"}'

FLEET = '{"name": "f", "target": "compapp:sleeper", "singleton": "fleet", "stop_timeout": 1}'

CASES = [
    ("fleet singleton without a lease url",
     f"companion_workers = [{FLEET}]",
     "companion 'f' is a fleet singleton(s) but companion_lease_url is not set"),
    ("lease url without a fleet singleton",
     'companion_lease_url = "redis://127.0.0.1:1/0"\n'
     f'companion_workers = [{GOOD}]',
     'companion_lease_url is set but no companion has "singleton": "fleet"'),
    ("lease url of an unknown scheme",
     'companion_lease_url = "mysql://h/db"\n'
     f"companion_workers = [{FLEET}]",
     "companion_lease_url 'mysql://h/db' has an unknown scheme"),
    ("stop_timeout that does not fit in the lease ttl",
     'companion_lease_url = "redis://127.0.0.1:1/0"\ncompanion_lease_ttl = 3\n'
     f"companion_workers = [{FLEET}]",
     "companion 'f': stop_timeout 1s does not fit in companion_lease_ttl 3s"),
    ("singleton of an unknown kind",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", "singleton": "site"}]',
     """companion 'a': singleton must be True, False, "host" or "fleet", got 'site'"""),
    ("unknown key",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", "stop_timout": 5}]',
     "companion 'a': unknown key 'stop_timout' (did you mean 'stop_timeout'?)"),
    ("missing name",
     'companion_workers = [{"target": "compapp:sleeper"}]',
     "companion_workers[0]: missing 'name'"),
    ("empty name",
     'companion_workers = [{"name": "", "target": "compapp:sleeper"}]',
     "companion_workers[0]: 'name' must be a non-empty string, got ''"),
    ("missing target",
     'companion_workers = [{"name": "a"}]',
     "companion 'a': missing 'target' (a 'module:callable') or 'command' "
        "(a program to run)"),
    ("empty target",
     'companion_workers = [{"name": "a", "target": ""}]',
     "companion 'a': 'target' must be a non-empty string, got ''"),
    ("duplicate names",
     f'companion_workers = [{GOOD}, {GOOD}]',
     "companion_workers[1]: duplicate name 'ok' (companion_workers[0] has it too)"),
    ("module does not import",
     'companion_workers = [{"name": "a", "target": "nosuchmodule:run"}]',
     "companion 'a': target 'nosuchmodule:run': module 'nosuchmodule' could not be imported: "
     "ModuleNotFoundError: No module named 'nosuchmodule'"),
    ("attribute missing",
     'companion_workers = [{"name": "a", "target": "compapp:nope"}]',
     "companion 'a': target 'compapp:nope': module 'compapp' has no attribute 'nope'"),
    ("not callable",
     'companion_workers = [{"name": "a", "target": "compapp:not_callable"}]',
     "companion 'a': target 'compapp:not_callable': 'compapp:not_callable' is not callable"),
    ("unknown signal",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", "stop_signal": "SIGFOO"}]',
     "companion 'a': stop_signal 'SIGFOO' is not a signal name"),
    ("negative timeout",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", "stop_timeout": -1}]',
     "companion 'a': stop_timeout must be a non-negative number of seconds, got -1"),
    ("non-numeric timeout",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", "reload_timeout": "ten"}]',
     "companion 'a': reload_timeout must be a number of seconds, got 'ten'"),
    ("bad stderr",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", "stderr": 5}]',
     "companion 'a': stderr must be a file path, 'stdout' or 'inherit', got 5"),
    ("typo in a global setting",
     f'companion_stop_timout = 5\ncompanion_workers = [{GOOD}]',
     "unknown setting 'companion_stop_timout' (did you mean 'companion_stop_timeout'?)"),
    ("bad global default",
     f'companion_stop_signal = "NOPE"\ncompanion_workers = [{GOOD}]',
     "Invalid value for companion_stop_signal"),
    ("missing cwd",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", "cwd": "/nonexistent"}]',
     "companion 'a': cwd '/nonexistent' is not a directory"),
    ("missing output directory",
     'companion_workers = [{"name": "a", "target": "compapp:sleeper", '
     '"stdout": "/nonexistent/a.log"}]',
     "companion 'a': stdout '/nonexistent/a.log': directory '/nonexistent' does not exist"),
    ("missing companion config file",
     'companion_config_file = "/nonexistent/companions.py"',
     "config file '/nonexistent/companions.py' does not exist"),
    ("not a list",
     'companion_workers = {"name": "a"}',
     "companion_workers must be a list of dicts, got dict"),
]


def run_to_exit(tmp_path, config: str, preload: bool = True):
    srv = Server(tmp_path, ("preload_app = True\n" if preload else "") + textwrap.dedent(config))
    srv.start()
    try:
        code = srv.proc.wait(60)
    except subprocess.TimeoutExpired:
        srv.cleanup()
        raise AssertionError(f"a bad config booted:\n{srv.log()}")
    leftovers = srv.tree()
    srv.cleanup()
    return code, srv.log(), leftovers


# Lease URLs the client cannot parse: each needs its client library (an
# extra the test matrix does not install), which parses it.
URL_CASES = [
    ("postgresql lease url that does not parse", "psycopg",
     'companion_lease_url = "postgresql://gc:secret@db.example:notaport/site"\n'
     f"companion_workers = [{FLEET}]",
     "companion_lease_url 'postgresql://gc:***@db.example:notaport/site' is not a URL the "
     "PostgreSQL client can use: port 'notaport' is not a number"),
    ("postgresql lease url with an unknown parameter", "psycopg",
     'companion_lease_url = "postgresql://gc@db.example/site?sslmod=require"\n'
     f"companion_workers = [{FLEET}]",
     "companion_lease_url 'postgresql://gc@db.example/site?sslmod=require' is not a URL the "
     'PostgreSQL client can use: invalid URI query parameter: "sslmod"'),
    ("redis lease url that does not parse", "redis",
     'companion_lease_url = "redis://cache.example:notaport/0"\n'
     f"companion_workers = [{FLEET}]",
     "companion_lease_url 'redis://cache.example:notaport/0' is not a URL the Redis client "
     "can use: Port could not be cast to integer value as 'notaport'"),
]


@pytest.mark.parametrize("config,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_stops_the_boot_with_a_clear_message(tmp_path, config, message):
    code, log, leftovers = run_to_exit(tmp_path, config)
    assert code == 1, log
    assert message in log
    assert "Traceback" not in log
    assert "Booting worker" not in log and "Companion manager" not in log  # nothing forked
    assert leftovers == []


@pytest.mark.parametrize("client,config,message", [c[1:] for c in URL_CASES],
                         ids=[c[0] for c in URL_CASES])
def test_a_lease_url_its_client_cannot_parse_stops_the_boot(tmp_path, client, config, message):
    pytest.importorskip(client, reason=f"the {client} client is not installed")
    test_bad_config_stops_the_boot_with_a_clear_message(tmp_path, config, message)


def test_every_problem_is_reported_at_once(tmp_path):
    code, log, _ = run_to_exit(tmp_path, """
        companion_workers = [
            {"name": "a", "target": "compapp:sleeper", "stop_timout": 5},
            {"name": "b", "target": "compapp"},
            {"name": "c", "target": "compapp:sleeper", "stderr": None},
        ]
    """)
    assert code == 1
    assert "invalid companion configuration (3 problems)" in log
    for fault in ("'stop_timout'", "'compapp' must look like 'module:callable'", "stderr"):
        assert fault in log


def test_bad_target_without_preload_fails_the_manager_boot_and_stops_gunicorn(tmp_path):
    code, log, leftovers = run_to_exit(
        tmp_path, 'companion_workers = [{"name": "a", "target": "compapp:nope"}]', preload=False)
    assert code == 1, log
    assert ("Companion manager failed to boot: invalid companion configuration: companion 'a': "
            "target 'compapp:nope': module 'compapp' has no attribute 'nope'") in log
    assert "Booting worker" not in log  # the manager boots first; no HTTP worker was forked
    assert leftovers == []
