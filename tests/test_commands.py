"""Table tests for the pure parts of commands.py: what a waiting control
request is answered once a companion settles, and how the answers of several
instances become one."""

from __future__ import annotations

import pytest

from gunicorn_companion import commands
from gunicorn_companion.lifecycle import ExitStatus, Record
from gunicorn_companion.protocol import ERROR_CODES
from gunicorn_companion.spec import CompanionSpec
from gunicorn_companion.states import State

SPEC = CompanionSpec(name="w", target="m:f")


def record(state, pid=None, wanted=True, last_exit=None):
    return Record(SPEC, state=state, pid=pid, wanted=wanted, last_exit=last_exit)


@pytest.mark.parametrize(
    "settled_record, reply",
    [
        (record(State.STARTING, pid=7), None),
        (record(State.RUNNING, pid=7), {"ok": True, "message": "w started (pid 7)", "pid": 7}),
        (record(State.BACKOFF, last_exit=ExitStatus(code=3)),
         {"ok": False, "code": "exited_while_starting",
          "error": "w exited with exit code 3 while starting; it will be retried "
                   "(see the Gunicorn log)"}),
        (record(State.FATAL), {"ok": False, "code": "did_not_start",
                               "error": "w is FATAL and did not start"}),
        (record(State.STOPPED, wanted=False), {"ok": False, "code": "did_not_start",
                                               "error": "w is STOPPED and did not start"}),
    ],
)
def test_a_start_is_answered_once_it_settles(settled_record, reply):
    assert commands._outcome_of_start("w", None)(settled_record) == reply


def test_a_restart_waits_for_a_new_pid():
    settled = commands._outcome_of_start("w", old_pid=7)
    assert settled(record(State.RUNNING, pid=7)) is None
    assert settled(record(State.RUNNING, pid=8))["ok"] is True


@pytest.mark.parametrize(
    "settled_record, reply",
    [
        (record(State.STOPPING, pid=7, wanted=False), None),
        (record(State.STOPPED, wanted=False, last_exit=ExitStatus(code=0)),
         {"ok": True, "message": "w stopped (exit code 0)"}),
        (record(State.STARTING, pid=8, wanted=True),
         {"ok": False, "code": "started_again", "error": "w was started again before it stopped"}),
    ],
)
def test_a_stop_is_answered_once_it_settles(settled_record, reply):
    assert commands._outcome_of_stop("w")(settled_record) == reply


def error(code, message):
    return {"ok": False, "code": code, "error": message}


@pytest.mark.parametrize(
    "replies, answer",
    [
        ([{"ok": True, "message": "a"}, {"ok": True, "message": "b"}],
         {"ok": True, "message": "a; b"}),
        ([{"ok": True, "message": "a"}, error("did_not_start", "b")],
         error("did_not_start", "b")),
        ([error("did_not_start", "a"), error("did_not_start", "b")],
         error("did_not_start", "a; b")),
        ([error("did_not_start", "a"), error("exited_while_starting", "b")],
         error("mixed", "a; b")),
        # a reply without a code (from an older sender) cannot lend its code
        ([{"ok": False, "error": "a"}, {"ok": False, "error": "b"}], error("mixed", "a; b")),
    ],
)
def test_the_instances_of_a_group_get_one_answer(replies, answer):
    got = []
    reply_for = commands._gather(["rq:0", "rq:1"], got.append)
    # answered in the order the instances settle, joined in the order named
    reply_for("rq:1")(replies[1])
    assert got == []
    reply_for("rq:0")(replies[0])
    assert got == [answer]
    assert answer["ok"] or answer["code"] in ERROR_CODES


def test_a_single_instance_gets_its_own_reply():
    got = []
    commands._gather(["w"], got.append)("w")(error("did_not_start", "w is FATAL"))
    assert got == [error("did_not_start", "w is FATAL")]


def test_a_request_still_waiting_when_its_companion_is_removed_gets_the_removed_code():
    import simulation

    sim = simulation.Simulation(seed=1, schedule=[])
    sup = sim.sup
    name = next(iter(sup.records))
    replies = []
    sup.wait_for(name, lambda record: None, replies.append)  # never settles by itself
    del sup.records[name]  # what retiring a removed companion ends with
    sup._settle_waiters(name)
    assert replies == [{"ok": False, "code": "removed",
                        "error": f"{name} was removed from the configuration"}]
