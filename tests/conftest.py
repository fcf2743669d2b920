import os

import pytest
from support import Server, short_socket_path

# The test run (pytest or a plugin) leaves COLUMNS=80 in the process environment, below
# os.environ, where the CLI run by a test finds it: its status table would
# then be fitted to 80 columns, and whether a long temporary path cuts the
# NOTE column off would depend on the path. Tests of the width set it.
os.unsetenv("COLUMNS")
os.unsetenv("LINES")


def pytest_addoption(parser):
    # mutmut runs the simulation once per mutant: fewer seeds keep a whole
    # module's run within an hour ([tool.mutmut] in pyproject.toml). CI's
    # 1,000 seeds run through `make simulate`, not this option.
    parser.addoption("--simulation-seeds", type=int, default=100,
                     help="seeds test_simulation.py's unmutated-core test runs (100)")


@pytest.fixture
def server(tmp_path):
    """Factory: ``server(config_text, app=..., args=...)`` -> a started Server.

    Every server is stopped and every process of its session killed at the end,
    whatever the test did.
    """
    started = []

    def make(config: str, **kwargs) -> Server:
        root = tmp_path / f"srv{len(started)}"
        root.mkdir()
        srv = Server(root, config, **kwargs)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.cleanup()


@pytest.fixture
def sock_path():
    """A control socket path short enough for AF_UNIX, removed afterwards."""
    path = short_socket_path()
    yield path
    for leftover in path.parent.iterdir():
        leftover.unlink()
    os.rmdir(path.parent)


# Durations a test measures but must not assert on: a bound tight enough to
# mean something flakes on a loaded machine, so the value is reported instead
# (in the summary at the end of the run) for a person to judge.
_MEASURED: list[tuple[str, str, float]] = []


@pytest.fixture
def measured(request):
    """``measured("what", seconds)`` reports a duration at the end of the run."""

    def record(what: str, seconds: float) -> None:
        _MEASURED.append((request.node.nodeid, what, seconds))

    return record


def pytest_terminal_summary(terminalreporter):
    if not _MEASURED:
        return
    terminalreporter.section("measured durations (reported, not asserted)")
    for nodeid, what, seconds in _MEASURED:
        terminalreporter.write_line(f"{seconds:8.3f}s  {what}  ({nodeid})")
