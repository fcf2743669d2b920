"""What the metrics endpoint and statsd say (metrics.py, statsd.py): pure,
from snapshot dicts; the exposition is read back with prometheus_client's
own parser."""

import html
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gunicorn_companion import metrics, statsd
from gunicorn_companion.metrics import Figures, ManagerFacts


def entry(name, state="RUNNING", pid=100, uptime=12.5, restarts=0, **extra):
    return {"name": name, "state": state, "pid": pid, "uptime": uptime, "restarts": restarts,
            "last_exit": None, "stdout": "/var/log/x.log", "stderr": "stdout", **extra}


ENTRIES = [
    entry("worker", restarts=3, last_exit={"code": 2}, output_dropped=7),
    entry("sched", state="BACKOFF", pid=None, uptime=None, last_exit={"signal": "SIGKILL"}),
    entry("leader", lease={"state": "held", "token": 42, "holder": "host-a", "expires_in": 9.5,
                           "why": None}),
    entry("follower", state="STARTING", lease={"state": "waiting", "token": None,
                                                "holder": "host-a", "expires_in": 3.0,
                                                "why": None}),
]
FIGURES = {"worker": Figures(rss=3000, pss=2000, uss=1000, cpu_seconds=1.25),
           "leader": Figures(rss=30, pss=20, uss=10, cpu_seconds=0.5)}
MANAGER = ManagerFacts(pid=77, restarts=2, uptime=100.0,
                       figures=Figures(rss=5000, pss=4000, uss=3000, cpu_seconds=9.0))


def parsed(text):
    """{(sample name, frozen labels): value}, and the families by name."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for f in families.values() for s in f.samples}
    return families, samples


def test_exposition_parses_with_prometheus_client():
    families, samples = parsed(metrics.exposition(ENTRIES, FIGURES, MANAGER))

    def value(name, **labels):
        return samples[("gunicorn_companion_" + name, frozenset(labels.items()))]

    assert value("up", companion="worker") == 1
    assert value("up", companion="sched") == 0
    assert value("state", companion="sched", state="BACKOFF") == 1
    assert value("state", companion="sched", state="RUNNING") == 0
    assert sum(v for (n, labels), v in samples.items() if n == "gunicorn_companion_state"
               and ("companion", "sched") in labels) == 1
    assert value("restarts_total", companion="worker") == 3
    assert value("uptime_seconds", companion="worker") == 12.5
    assert value("uptime_seconds", companion="sched") == 0
    assert value("memory_bytes", companion="worker", kind="pss") == 2000
    assert value("cpu_seconds_total", companion="worker") == 1.25
    assert ("gunicorn_companion_memory_bytes",
            frozenset({"companion": "sched", "kind": "rss"}.items())) not in samples
    assert value("output_dropped_lines_total", companion="worker") == 7
    assert value("output_dropped_lines_total", companion="sched") == 0
    assert value("last_exit_code", companion="worker") == 2
    assert value("last_exit_signal", companion="sched", signal="SIGKILL") == 9
    assert value("lease_held", companion="leader") == 1
    assert value("lease_token", companion="leader") == 42
    assert value("lease_held", companion="follower") == 0
    assert ("gunicorn_companion_lease_token",
            frozenset({"companion": "follower"}.items())) not in samples
    assert ("gunicorn_companion_lease_held",
            frozenset({"companion": "worker"}.items())) not in samples
    assert value("manager_restarts_total") == 2
    assert value("manager_memory_bytes", kind="uss") == 3000
    # counters are named _total, and every family has its HELP and TYPE
    for family in families.values():
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
    assert families["gunicorn_companion_restarts"].type == "counter"
    assert families["gunicorn_companion_up"].type == "gauge"


def test_every_family_is_declared_once_with_help_and_type():
    text = metrics.exposition(ENTRIES, FIGURES, MANAGER)
    for name, kind, _ in metrics.METRICS:
        assert text.count(f"# TYPE gunicorn_companion_{name} {kind}\n") == 1
        assert text.count(f"# HELP gunicorn_companion_{name} ") == 1


@pytest.mark.parametrize("name", ['we"ird', "back\\slash", "new\nline", "ünï-cødé", "a}b{c=d,e"])
def test_label_values_are_escaped(name):
    _, samples = parsed(metrics.exposition([entry(name)], {}, MANAGER))
    assert samples[("gunicorn_companion_up", frozenset({"companion": name}.items()))] == 1


def test_no_companions_still_parses():
    _, samples = parsed(metrics.exposition([], {}, ManagerFacts(1, 0, 0.5, None)))
    assert samples == {("gunicorn_companion_manager_restarts_total", frozenset()): 0,
                       ("gunicorn_companion_manager_uptime_seconds", frozenset()): 0.5}


def test_status_page_is_self_contained_and_escapes_every_value():
    hostile = entry("evil", stdout="<script>alert(1)</script>",
                    last_exit={"signal": "<b>SIG</b>"})
    page = metrics.status_page(ENTRIES + [hostile], FIGURES, MANAGER, "app <&> [x]").decode()
    assert '<meta name="viewport"' in page
    assert "<script>alert(1)" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert "<b>SIG</b>" not in page
    assert "app &lt;&amp;&gt; [x]" in page
    assert "http" not in page.replace("http-equiv", "")  # no external asset
    for e in ENTRIES:
        assert f'data-companion="{e["name"]}"' in page
    assert "2.9K / 2.0K / 1000B" in page
    assert "exit code 2" in page and "signal SIGKILL" in page


def test_status_json_carries_the_same_rows():
    data = json.loads(metrics.status_json(ENTRIES, FIGURES, MANAGER, "t"))
    assert [r["name"] for r in data["rows"]] == [e["name"] for e in ENTRIES]
    worker = data["rows"][0]["cells"]
    assert worker == ["worker", "RUNNING", "100", "12s", "3", "2.9K / 2.0K / 1000B",
                      "exit code 2", "/var/log/x.log | stdout"]
    assert data["manager"] == "Manager pid 77, up 1m40s, replaced 2 times, RSS 4.9K"


# -- statsd ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix, formatted", [("", ""), ("app", "app."), ("app.", "app."),
                                               ("app...", "app."), ("a.b", "a.b.")])
def test_prefix_as_gunicorn_formats_it(prefix, formatted):
    assert statsd.gunicorn_prefix(prefix) == formatted


def test_statsd_lines_and_restart_increments():
    sent = {}
    entries = [entry("worker", restarts=2), entry("odd.name:x|y", state="FATAL", pid=None)]
    first = statsd.lines(entries, {"worker": {"rss": 3, "pss": 2, "uss": 1}}, sent, "app.")
    assert first == [
        "app.companion.worker.state:20|g",
        "app.companion.worker.up:1|g",
        "app.companion.worker.restarts:2|c|@1.0",
        "app.companion.worker.memory.rss:3|g",
        "app.companion.worker.memory.pss:2|g",
        "app.companion.worker.memory.uss:1|g",
        "app.companion.odd_name_x_y.state:200|g",
        "app.companion.odd_name_x_y.up:0|g",
    ]
    entries[0]["restarts"] = 5
    again = statsd.lines(entries, {}, sent, "")
    assert "companion.worker.restarts:3|c|@1.0" in again
    assert not any("restarts" in line for line in statsd.lines(entries, {}, sent, ""))


def test_dogstatsd_tags_appended_as_gunicorn_does():
    assert statsd.with_tags("a:1|g", "env:prod,app:x") == b"a:1|g|#env:prod,app:x"
    assert statsd.with_tags("a:1|g", "") == b"a:1|g"
