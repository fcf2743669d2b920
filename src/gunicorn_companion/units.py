"""Durations and sizes as people read them, the same in the CLI, top and the status page."""

from __future__ import annotations

import math


def format_duration(seconds: object) -> str:
    """Seconds as a compact duration: '5s', '3m12s', '2h05m', '3d04h'; '-' when unknown."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "-"
    if not math.isfinite(seconds):
        return "-"
    # A slightly negative value can only be clock noise between two readings.
    total = max(0, int(seconds))
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(size: object) -> str:
    """Unshared memory as '812K', '12.3M', '1.5G'; '-' when not measured."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
        return "-"
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{int(size)}B"
