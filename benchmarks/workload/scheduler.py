"""A scheduler: companion target ``workload.scheduler:main``, or
``python -m workload.scheduler``."""

from __future__ import annotations

from workload import app  # noqa: F401  (the whole service: what a real scheduler imports)
from workload.background import idle_loop, process_name

_ENTRIES = [(f"job-{i}", 60 * (i % 15 + 1)) for i in range(50)]


def _tick(n: int) -> dict:
    due = [{"name": name, "every": every, "at": n} for name, every in _ENTRIES if n % every == 0]
    state = {"tick": n, "due": due}
    state["parent"] = state  # a cycle, as callback graphs make
    return state


def main() -> None:
    idle_loop(process_name("scheduler"), _tick)


if __name__ == "__main__":
    main()
