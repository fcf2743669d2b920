"""Companion states and the named groups the rest of the code asks about.

Pure data: no imports beyond the standard library, so the CLI, the
protocol and the tests can use it without loading Gunicorn.
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    """supervisorctl's vocabulary, so operators read it without a glossary."""

    STOPPED = "STOPPED"  # stopped on purpose (or never started); not restarted
    STARTING = "STARTING"  # forked, not yet up for `startsecs`
    RUNNING = "RUNNING"  # up for at least `startsecs`
    BACKOFF = "BACKOFF"  # exited on its own; waiting `restart_delay` to restart
    STOPPING = "STOPPING"  # asked to stop; waiting for it to exit
    FATAL = "FATAL"  # failed to start too many times in a row; stays down

    def __str__(self) -> str:
        return self.value


# A process exists (has a pid we must reap) in exactly these states.
PROCESS_STATES = frozenset({State.STARTING, State.RUNNING, State.STOPPING})

# States a `start` request moves out of; in the others it is a no-op or waits.
STARTABLE_STATES = frozenset({State.STOPPED, State.BACKOFF, State.FATAL})

# States in which nothing will happen without a request: the manager may exit
# once every companion is in one of these during shutdown.
QUIESCENT_STATES = frozenset({State.STOPPED, State.FATAL})
