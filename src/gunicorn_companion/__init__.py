"""Run background processes as companions of Gunicorn, forked from the preloaded app.

Kept light on purpose: importing the package must not import Gunicorn (the
control CLI starts from here). The Application classes load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .notify import fencing_token, heartbeat, ready

__all__ = ["CompanionApplication", "CompanionWSGIApplication", "__version__", "fencing_token",
           "heartbeat", "ready"]


def __getattr__(name: str):
    if name in ("CompanionApplication", "CompanionWSGIApplication"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
