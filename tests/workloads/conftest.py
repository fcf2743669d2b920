"""The workload matrix (``make test-workloads``): fixtures and the timing summary.

Not collected by a plain ``pytest`` (``norecursedirs`` in pyproject.toml): run
``pytest tests/workloads``. Every test here carries the ``workloads`` marker.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from redis_server import redis_url  # noqa: F401  (the fixture)

REDIS_DATABASES = 16  # redis-server's default

# workload -> what was timed -> the durations measured, in seconds
TIMINGS = pytest.StashKey[dict]()

_databases = itertools.count()


def pytest_configure(config):
    config.stash[TIMINGS] = defaultdict(lambda: defaultdict(list))


@pytest.fixture
def timings(request):
    """``timings(workload, what, seconds)``: one duration for the summary at the end."""
    def record(workload: str, what: str, seconds: float) -> None:
        request.config.stash[TIMINGS][workload][what].append(seconds)
    return record


def pytest_collection_modifyitems(items):
    for item in items:
        if "/workloads/" in str(item.path):
            item.add_marker(pytest.mark.workloads)


@pytest.fixture
def redis_db(redis_url):  # noqa: F811 (the fixture)
    """A database of the module's redis-server, emptied: no queue, registration
    or job store is left over from an earlier test (a SIGKILLed one, say)."""
    from redis import Redis

    url = f"{redis_url}/{next(_databases) % REDIS_DATABASES}"
    connection = Redis.from_url(url)
    connection.flushdb()
    yield url, connection
    connection.close()


def pytest_terminal_summary(terminalreporter, config):
    measured = config.stash.get(TIMINGS, None)
    if not measured:
        return
    terminalreporter.section("workload timings (seconds: median / max over the runs)")
    for workload, kinds in measured.items():
        parts = []
        for kind, values in kinds.items():
            ordered = sorted(values)
            parts.append(f"{kind} {ordered[len(ordered) // 2]:.2f} / {ordered[-1]:.2f} "
                         f"(n={len(ordered)})")
        terminalreporter.write_line(f"{workload:14} " + "; ".join(parts))
