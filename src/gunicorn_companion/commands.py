"""Control commands: a table from command name to handler.

A handler gets the manager, the parsed request and ``respond``; it answers
at once, or later from the manager's loop (``stop`` answers once the
companion has stopped). It never blocks.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import protocol
from .output import TAIL_LINES
from .spec import suggest
from .states import PROCESS_STATES, QUIESCENT_STATES, State

Respond = Callable[[dict], None]


def _unknown(manager, name: str) -> dict:
    groups = list(dict.fromkeys(r.spec.group_name for r in manager.records.values()))
    known = ", ".join(groups) or "none"
    return protocol.error(
        "no_such_companion",
        f"no companion named {name!r}{suggest(name, groups + list(manager.records))}; "
        f"known: {known}")


def resolve(manager, name: str) -> list[str]:
    """A companion's own name, or the name of a group of instances: all of them."""
    live = [n for n in manager.records if n not in manager.retiring]
    if name in live:
        return [name]
    return [n for n in live if manager.records[n].spec.group_name == name]


def _refuse_while_shutting_down(manager) -> dict | None:
    if manager.shutting_down:
        return protocol.error("shutting_down", "the companion manager is shutting down")
    return None


# Every field a status entry can have (Supervisor.snapshot); a request may ask for
# only some of them: {"cmd": "status", "fields": ["name", "state"]}.
STATUS_FIELDS = ("name", "state", "pid", "uptime", "restarts", "last_exit", "stdout", "stderr",
                 "stop_timeout", "reload_timeout", "target", "command", "group", "wanted",
                 "singleton", "stop_as_group", "stopping", "waiting", "memory", "last_recycle",
                 "backoff", "output_dropped", "lease")
# Fields read straight off a record: a status asking only for these skips the
# full snapshot (the brief status of scripts and health checks, 200 companions
# and more, on a connection kept open).
_RECORD_FIELDS = {
    "name": lambda record: record.name,
    "state": lambda record: str(record.state),
    "pid": lambda record: record.pid,
    "restarts": lambda record: record.restarts,
}


def status_fields(value: object) -> tuple[str, ...] | str:
    """The ``fields`` of a status request, or what is wrong with them."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else protocol._kind(value)
        return (f'"fields" must be a non-empty list of status fields like ["name", "state"], '
                f"got {got}")
    for field in value:
        if not isinstance(field, str):
            return f'"fields" must hold field names (strings), got {protocol._kind(field)}'
        if field not in STATUS_FIELDS:
            hint = suggest(field, STATUS_FIELDS)
            return (f"unknown status field {protocol._show(field)}{hint}; "
                    f"known: {', '.join(STATUS_FIELDS)}")
    return tuple(dict.fromkeys(value))


def cmd_status(manager, request, respond: Respond) -> None:
    if "fields" not in request.raw:
        respond(protocol.ok(companions=manager.snapshot(), manager_pid=os.getpid(),
                            master_pid=manager.master_pid))
        return
    fields = status_fields(request.raw["fields"])
    if isinstance(fields, str):
        respond(protocol.error("bad_field", fields))
        return
    if all(field in _RECORD_FIELDS for field in fields):
        getters = [(field, _RECORD_FIELDS[field]) for field in fields]
        entries = [{field: get(record) for field, get in getters}
                   for record in manager.records.values()]
    else:
        # fields that appear only when they say something stay absent
        entries = [{field: entry[field] for field in fields if field in entry}
                   for entry in manager.snapshot()]
    respond(protocol.ok(companions=entries, manager_pid=os.getpid(),
                        master_pid=manager.master_pid))


def _outcome_of_start(name: str, old_pid: int | None):
    """Waits for a start (or the start half of a restart) to settle."""

    def settled(record) -> dict | None:
        if record.state == State.RUNNING and record.pid != old_pid:
            return protocol.ok(message=f"{name} started (pid {record.pid})", pid=record.pid)
        if record.state == State.BACKOFF:
            how = record.last_exit.describe() if record.last_exit else "an error"
            return protocol.error(
                "exited_while_starting",
                f"{name} exited with {how} while starting; it will be retried "
                f"(see the Gunicorn log)")
        if record.state in QUIESCENT_STATES:
            return protocol.error("did_not_start", f"{name} is {record.state} and did not start")
        return None

    return settled


def _outcome_of_stop(name: str):
    def settled(record) -> dict | None:
        if record.state in QUIESCENT_STATES:
            how = f" ({record.last_exit.describe()})" if record.last_exit else ""
            return protocol.ok(message=f"{name} stopped{how}")
        if record.state not in PROCESS_STATES | {State.BACKOFF} or record.wanted:
            return protocol.error("started_again", f"{name} was started again before it stopped")
        return None

    return settled


def _gather(names: list[str], respond: Respond) -> Callable[[str], Respond]:
    """One reply for a request on several instances, once each has settled:
    ok when all are, else the errors."""
    replies: dict[str, dict] = {}

    def one(name: str) -> Respond:
        def done(reply: dict) -> None:
            replies[name] = reply
            if len(replies) < len(names):
                return
            if len(names) == 1:
                return respond(reply)
            ordered = [replies[n] for n in names]
            errors = [r for r in ordered if not r["ok"]]
            if errors:
                # one code when every instance failed the same way
                codes = {r.get("code") for r in errors}
                code = codes.pop() if len(codes) == 1 and None not in codes else "mixed"
                return respond(protocol.error(code, "; ".join(r["error"] for r in errors)))
            respond(protocol.ok(message="; ".join(r.get("message", "") for r in ordered)))
        return done

    return one


def _each(manager, request, respond: Respond, act: Callable[[str, Respond], None]) -> None:
    names = resolve(manager, request.name)
    if not names:
        return respond(_unknown(manager, request.name))
    reply_for = _gather(names, respond)
    for name in names:
        act(name, reply_for(name))


def cmd_start(manager, request, respond: Respond) -> None:
    if refusal := _refuse_while_shutting_down(manager):
        return respond(refusal)

    def start(name: str, done: Respond) -> None:
        record = manager.records[name]
        if record.state == State.RUNNING and record.wanted:
            return done(protocol.ok(message=f"{name} is already running (pid {record.pid})",
                                    pid=record.pid))
        manager.wait_for(name, _outcome_of_start(name, None), done)
        if not (record.state == State.STARTING and record.wanted):
            manager.request(name, "start")

    _each(manager, request, respond, start)


def cmd_restart(manager, request, respond: Respond) -> None:
    if refusal := _refuse_while_shutting_down(manager):
        return respond(refusal)

    def restart(name: str, done: Respond) -> None:
        manager.wait_for(name, _outcome_of_start(name, manager.records[name].pid), done)
        manager.request(name, "restart")

    _each(manager, request, respond, restart)


def cmd_stop(manager, request, respond: Respond) -> None:
    def stop(name: str, done: Respond) -> None:
        record = manager.records[name]
        if record.state in QUIESCENT_STATES:
            return done(protocol.ok(message=f"{name} is already {record.state}"))
        manager.wait_for(name, _outcome_of_stop(name), done)
        manager.request(name, "stop")

    _each(manager, request, respond, stop)


def cmd_reread(manager, request, respond: Respond) -> None:
    if refusal := _refuse_while_shutting_down(manager):
        return respond(refusal)
    ok, message, changes = manager.reread()
    if not ok:  # shutting down is refused above: the configuration is invalid
        return respond(protocol.error("invalid_config", message))
    respond(protocol.ok(message=message, **changes))


def cmd_tail(manager, request, respond) -> None:
    names = resolve(manager, request.name)
    if not names:
        return respond(_unknown(manager, request.name))
    count = request.raw.get("lines", 10)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= TAIL_LINES:
        return respond(protocol.error(
            "bad_field", f'"lines" must be a whole number from 0 to {TAIL_LINES}, got {count!r}'))
    follow = request.raw.get("follow", False)
    if not isinstance(follow, bool):
        return respond(protocol.error("bad_field",
                                      f'"follow" must be true or false, got {follow!r}'))
    lines = manager.output.tail(names, count)
    if not follow:
        return respond(protocol.ok(lines=lines))
    respond.push(protocol.ok(lines=lines))
    manager.follow(names, respond)


COMMANDS: dict[str, Callable[..., None]] = {
    "status": cmd_status,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "reread": cmd_reread,
    "tail": cmd_tail,
}
assert set(COMMANDS) == set(protocol.COMMANDS), "every protocol command needs a handler"


def dispatch(manager, request: protocol.Request, respond: Respond) -> None:
    COMMANDS[request.cmd](manager, request, respond)
