"""What a freshly forked companion manager tells the master on the lifeline.

Below both the master (arbiter.py) and the manager (boot.py), so neither
imports the other for two byte strings.
"""

from __future__ import annotations

# The manager booted: its companions are starting.
READY = b"ready\n"
# The manager could not boot; the rest of the line says why.
ERROR_PREFIX = b"error "


def error_line(message: str) -> bytes:
    return ERROR_PREFIX + message.encode("utf-8", "replace") + b"\n"


def parse(report: bytes) -> tuple[bool, str]:
    """A whole boot line (ending in a newline) -> (booted, why not)."""
    if report == READY:
        return True, ""
    return False, report[len(ERROR_PREFIX):].decode("utf-8", "replace").rstrip("\n")
