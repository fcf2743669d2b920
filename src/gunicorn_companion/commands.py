"""Control commands: a table from command name to handler.

A handler gets the manager, the parsed request and ``respond``; it answers
at once, or later from the manager's loop (``stop`` answers once the
companion has stopped). It never blocks.
"""

from __future__ import annotations

from typing import Callable

from . import protocol
from .spec import suggest
from .states import PROCESS_STATES, QUIESCENT_STATES, State

Respond = Callable[[dict], None]


def _unknown(manager, name: str) -> dict:
    known = ", ".join(manager.records) or "none"
    return protocol.error(
        f"no companion named {name!r}{suggest(name, list(manager.records))}; known: {known}")


def _refuse_while_shutting_down(manager) -> dict | None:
    if manager.shutting_down:
        return protocol.error("the companion manager is shutting down")
    return None


def cmd_status(manager, request, respond: Respond) -> None:
    respond(protocol.ok(companions=manager.snapshot()))


def _outcome_of_start(name: str, old_pid: int | None):
    """Waits for a start (or the start half of a restart) to settle."""

    def settled(record) -> dict | None:
        if record.state == State.RUNNING and record.pid != old_pid:
            return protocol.ok(message=f"{name} started (pid {record.pid})", pid=record.pid)
        if record.state == State.BACKOFF:
            how = record.last_exit.describe() if record.last_exit else "an error"
            return protocol.error(
                f"{name} exited with {how} while starting; it will be retried "
                f"(see the Gunicorn log)")
        if record.state in QUIESCENT_STATES:
            return protocol.error(f"{name} is {record.state} and did not start")
        return None

    return settled


def cmd_start(manager, request, respond: Respond) -> None:
    name = request.name
    if name not in manager.records or name in manager.retiring:
        return respond(_unknown(manager, name))
    if refusal := _refuse_while_shutting_down(manager):
        return respond(refusal)
    record = manager.records[name]
    if record.state == State.RUNNING and record.wanted:
        return respond(protocol.ok(message=f"{name} is already running (pid {record.pid})",
                                   pid=record.pid))
    manager.wait_for(name, _outcome_of_start(name, None), respond)
    if not (record.state == State.STARTING and record.wanted):
        manager.request(name, "start")


def cmd_restart(manager, request, respond: Respond) -> None:
    name = request.name
    if name not in manager.records or name in manager.retiring:
        return respond(_unknown(manager, name))
    if refusal := _refuse_while_shutting_down(manager):
        return respond(refusal)
    old_pid = manager.records[name].pid
    manager.wait_for(name, _outcome_of_start(name, old_pid), respond)
    manager.request(name, "restart")


def cmd_stop(manager, request, respond: Respond) -> None:
    name = request.name
    if name not in manager.records or name in manager.retiring:
        return respond(_unknown(manager, name))
    if manager.records[name].state in QUIESCENT_STATES:
        return respond(protocol.ok(message=f"{name} is already {manager.records[name].state}"))

    def settled(record) -> dict | None:
        if record.state in QUIESCENT_STATES:
            how = f" ({record.last_exit.describe()})" if record.last_exit else ""
            return protocol.ok(message=f"{name} stopped{how}")
        if record.state not in PROCESS_STATES | {State.BACKOFF} or record.wanted:
            return protocol.error(f"{name} was started again before it stopped")
        return None

    manager.wait_for(name, settled, respond)
    manager.request(name, "stop")


def cmd_reread(manager, request, respond: Respond) -> None:
    ok, message, changes = manager.reread()
    if not ok:
        return respond(protocol.error(message))
    respond(protocol.ok(message=message, **{k: v for k, v in changes.items()}))


COMMANDS: dict[str, Callable[..., None]] = {
    "status": cmd_status,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "reread": cmd_reread,
}
assert set(COMMANDS) == set(protocol.COMMANDS), "every protocol command needs a handler"


def dispatch(manager, request: protocol.Request, respond: Respond) -> None:
    COMMANDS[request.cmd](manager, request, respond)
