"""Fleet singletons' pure rules, by table: the boot-time refusals (spec.py),
the lifecycle's lease events, and the manager's lease deadlines (fleet.py)
driven with an explicit clock. The end-to-end behaviour is tests/test_fleet.py."""

from __future__ import annotations

import logging
import signal
from dataclasses import replace

import pytest

from gunicorn_companion import lifecycle as lc
from gunicorn_companion.fleet import Fleet
from gunicorn_companion.spec import CompanionSpec, fleet_faults, lease_stop_budget
from gunicorn_companion.states import State

FLEET = CompanionSpec(name="s", target="m:f", singleton="fleet", stop_timeout=0.5)
HOST = CompanionSpec(name="h", target="m:f", singleton=True)
URL = "redis://127.0.0.1:6379/0"


def installed(module):
    return module == "redis"


# -- refused at boot -----------------------------------------------------------------


@pytest.mark.parametrize("specs, url, ttl, fragments", [
    ((FLEET,), URL, 3.0, []),
    ((FLEET,), None, 3.0, ["companion 's' is a fleet singleton(s) but companion_lease_url is "
                           "not set"]),
    ((HOST,), URL, 3.0, ['no companion has "singleton": "fleet"']),
    ((FLEET,), "http://x/", 3.0, ["unknown scheme; use one of redis://"]),
    ((FLEET,), "redis-no-scheme", 3.0, ["unknown scheme"]),
    ((FLEET,), "postgresql://u@h/db", 3.0,
     ["pip install 'gunicorn-companion[postgresql]'"]),
    ((replace(FLEET, stop_timeout=10.0),), URL, 15.0,
     ["companion 's': stop_timeout 10s does not fit in companion_lease_ttl 15s; lower "
      "stop_timeout to at most 6.5s or raise companion_lease_ttl to at least 22s"]),
    ((replace(FLEET, stop_timeout=6.5),), URL, 15.0, []),
])
def test_fleet_settings_refused_at_boot_name_the_fix(specs, url, ttl, fragments):
    problems = fleet_faults(specs, url, ttl, installed)
    assert len(problems) == len(fragments), problems
    for problem, fragment in zip(problems, fragments, strict=True):
        assert fragment in problem


def test_a_password_in_the_url_is_not_repeated():
    problems = fleet_faults((FLEET,), "http://u:secret@h/", 3.0, installed)
    assert "secret" not in problems[0] and "u:***@h" in problems[0]


# -- the lifecycle's lease events ------------------------------------------------------

NOW = 100.0
WAITING = lc.Record(FLEET, state=State.STARTING, wanted=True, waiting="fleet lease")
RUNNING = lc.Record(FLEET, state=State.RUNNING, pid=42, wanted=True, started_at=50.0,
                    leased=True)
STOPPING = lc.Record(FLEET, state=State.STOPPING, pid=42, wanted=False, started_at=50.0,
                     deadline=130.0, leased=True, stopping=lc.Stopping(99.0, 15, 31.0))
KILL, TERM = int(signal.SIGKILL), int(signal.SIGTERM)


@pytest.mark.parametrize("before, event, fields, actions", [
    # a start without the lease: STARTING with no process
    (lc.Record(FLEET), lc.Start(), {"state": State.STARTING, "pid": None, "wanted": True,
                                    "waiting": "fleet lease"}, []),
    (WAITING, lc.LeaseNote("fleet lease held by b:1 (token 7)"),
     {"waiting": "fleet lease held by b:1 (token 7)"}, []),
    (WAITING, lc.LeaseGranted(), {"leased": True, "waiting": None}, [lc.Spawn("s")]),
    (replace(WAITING, wanted=False), lc.LeaseGranted(), {"leased": True}, []),
    (WAITING, lc.Stop(), {"state": State.STOPPED, "wanted": False, "waiting": None}, []),
    (WAITING, lc.Restart(), {}, []),
    (WAITING, lc.Recycle("x"), {}, []),
    # lost while running: a graceful stop that still wants to run again
    (RUNNING, lc.LeaseLost(quick=False, reason="r"),
     {"state": State.STOPPING, "leased": False, "wanted": True, "deadline": NOW + 0.5},
     [lc.Kill("s", 42, TERM)]),
    (RUNNING, lc.LeaseLost(quick=True, reason="r"),
     {"state": State.STOPPING, "leased": False, "wanted": True, "killed": True},
     [lc.Kill("s", 42, KILL, group=True)]),
    # already stopping with a long timeout: the lease's deadline wins
    (STOPPING, lc.LeaseLost(quick=False, reason="r"),
     {"leased": False, "deadline": NOW + 0.5}, []),
    (STOPPING, lc.LeaseLost(quick=True, reason="r"),
     {"leased": False, "killed": True, "deadline": None}, [lc.Kill("s", 42, KILL, group=True)]),
    # the process exits: back to waiting for the lease, no spawn
    (replace(RUNNING, state=State.STOPPING, leased=False, deadline=NOW + 1),
     lc.Exited(lc.ExitStatus(signal=TERM)),
     {"state": State.STARTING, "pid": None, "waiting": "fleet lease"}, []),
])
def test_lease_events(before, event, fields, actions):
    after, got = lc.step(before, event, NOW)
    for key, value in fields.items():
        assert getattr(after, key) == value, key
    assert [a for a in got if not isinstance(a, lc.Log)] == actions


# -- the manager's deadlines -------------------------------------------------------------

TTL = 3.0


class Clock:
    def __init__(self):
        self.t = NOW

    def __call__(self):
        return self.t


class Said:
    """The keeper link as a list of what was said to it."""

    def __init__(self):
        self.lines = []
        self.pid = None

    def send(self, *words):
        self.lines.append(" ".join(str(w) for w in words))


def manager(record):
    clock, said, records, events = Clock(), Said(), {"s": record}, []

    def apply(name, event):
        events.append(event)
        records[name], _ = lc.step(records[name], event, clock())

    fleet = Fleet(TTL, said, apply=apply, records=lambda: records, now=clock,
                  log=logging.getLogger("test"), owner="me:1")
    fleet.sync("s")
    return fleet, clock, said, records, events


def test_granted_then_not_renewed_stops_before_expiry():
    fleet, clock, said, records, events = manager(WAITING)
    assert said.lines == ["want s"]
    fleet.news(f"granted s 7 0.0 {NOW!r}")
    assert isinstance(events[-1], lc.LeaseGranted)
    stop_at = NOW + TTL - lease_stop_budget(0.5)
    assert fleet.next_deadline() == stop_at
    fleet.news(f"renewed s 7 {NOW + 1!r}")
    assert fleet.next_deadline() == stop_at + 1
    clock.t = stop_at + 1
    fleet.check(clock())
    assert isinstance(events[-1], lc.LeaseLost) and not events[-1].quick
    assert said.lines[-1] == "forget s 7"
    assert fleet.status("s", clock())["state"] == "waiting"


def test_a_frozen_holder_kills_at_once_before_believing_news():
    fleet, clock, said, records, events = manager(WAITING)
    fleet.news(f"granted s 7 0.0 {NOW!r}")
    records["s"] = replace(records["s"], state=State.RUNNING, pid=42)
    clock.t = NOW + TTL + 5  # woke long after
    fleet.news(f"renewed s 7 {NOW + 0.5!r}")  # sent before the freeze
    lost = [e for e in events if isinstance(e, lc.LeaseLost)]
    assert lost and lost[0].quick
    assert fleet.token_of("s") is None


def test_a_lock_delay_holds_the_start_back():
    fleet, clock, said, records, events = manager(WAITING)
    fleet.news(f"granted s 7 {TTL!r} {NOW!r}")
    assert not any(isinstance(e, lc.LeaseGranted) for e in events)
    assert fleet.status("s", clock())["state"] == "delay"
    assert records["s"].waiting.startswith("fleet lease lock-delay of 3s (token 7)")
    fleet.news(f"renewed s 7 {NOW + 1!r}")
    fleet.news(f"renewed s 7 {NOW + 2!r}")
    clock.t = NOW + TTL
    fleet.check(clock())
    assert isinstance(events[-1], lc.LeaseGranted)


def test_released_only_once_the_companion_is_gone():
    fleet, clock, said, records, events = manager(WAITING)
    fleet.news(f"granted s 7 0.0 {NOW!r}")
    records["s"] = replace(records["s"], state=State.STOPPING, pid=42, wanted=False)
    fleet.sync("s")
    assert not any(line.startswith("release") for line in said.lines)
    records["s"] = replace(records["s"], state=State.STOPPED, pid=None)
    fleet.sync("s")
    assert said.lines[-1] == "release s 7"


def test_status_of_a_waiting_host_names_the_holder():
    fleet, clock, said, records, events = manager(WAITING)
    fleet.news("busy s 9 other:5")
    assert fleet.status("s", clock()) == {"state": "waiting", "token": 9, "holder": "other:5",
                                          "expires_in": None, "why": None}
    assert records["s"].waiting == "fleet lease held by other:5 (token 9)"
    fleet.news("unavailable s Redis: ConnectionError: refused")
    assert fleet.status("s", clock())["state"] == "unavailable"
    assert "refused" in records["s"].waiting


# -- health checks ------------------------------------------------------------------------


def _entry(state, lease, **more):
    return {"name": "s", "state": state, "singleton": "fleet", "lease": lease, **more}


@pytest.mark.parametrize("entry, healthy, standby", [
    # another host runs it: this host stands by, healthy (a probe must not
    # restart every standby pod)
    (_entry("STARTING", {"state": "waiting", "token": 9, "holder": "b:1", "expires_in": None,
                         "why": None}, waiting="fleet lease held by b:1 (token 9)"), True, ["s"]),
    (_entry("STARTING", {"state": "delay", "token": 9, "holder": "me:1", "expires_in": 2.0,
                         "why": "lock-delay: starts in 2s"}), True, ["s"]),
    # the service cannot be asked: no host can run it, which is a fault
    (_entry("STARTING", {"state": "unavailable", "token": None, "holder": None,
                         "expires_in": None, "why": "refused"},
            waiting="fleet lease; the lease service cannot be asked: refused"), False, []),
    (_entry("RUNNING", {"state": "held", "token": 9, "holder": "me:1", "expires_in": 2.0,
                        "why": None}), True, []),
])
def test_a_fleet_singleton_standing_by_is_healthy(entry, healthy, standby):
    from gunicorn_companion.ctl import assess_health, format_check
    verdict = assess_health([entry], [])
    assert verdict["healthy"] is healthy
    assert verdict.get("standing_by", []) == standby
    if standby:
        assert "standing by (another host runs it): s" in format_check(verdict)


# -- regressions found by tests/fleet_simulation.py -------------------------------------------


def test_a_past_lock_delay_of_an_unwanted_companion_is_no_deadline():
    # seed 4: the manager's loop would spin on a deadline that stays due
    fleet, clock, said, records, events = manager(WAITING)
    fleet.news(f"granted s 7 {TTL!r} {NOW!r}")
    records["s"] = replace(records["s"], wanted=False, state=State.STOPPED)
    clock.t = NOW + 2.6
    fleet.news(f"renewed s 7 {NOW + 2.5!r}")
    clock.t = NOW + TTL + 0.1  # the lock-delay is over, the lease still ours
    fleet.check(clock())
    assert fleet.next_deadline() > clock()


def test_a_released_lease_leaves_no_leave_to_start():
    # seed 17: a start after a release spawned during another grant's lock-delay
    fleet, clock, said, records, events = manager(WAITING)
    fleet.news(f"granted s 7 0.0 {NOW!r}")
    assert records["s"].leased
    records["s"] = replace(records["s"], wanted=False, state=State.STOPPED)
    fleet.sync("s")
    assert "release s 7" in said.lines
    assert not records["s"].leased
    after, actions = lc.step(records["s"], lc.Start(), clock())
    assert not any(isinstance(a, lc.Spawn) for a in actions)


# -- systemd readiness ------------------------------------------------------------------------


def test_a_standby_host_settles_for_systemd():
    # Type=notify: READY=1 waits for every companion to settle. A fleet
    # singleton that waits for its lease (another host runs it, or the
    # service is down) must not hold the whole unit's start back.
    from gunicorn_companion.loop import readiness
    from gunicorn_companion.sdnotify import settled, summary
    companions = readiness({"s": WAITING, "r": replace(RUNNING, spec=replace(FLEET, name="r"))})
    assert settled(companions)
    assert summary(companions) == "1/2 companions RUNNING; s STANDBY"
    forking = lc.Record(replace(FLEET, singleton=False), state=State.STARTING, wanted=True)
    assert not settled(readiness({"x": forking}))
