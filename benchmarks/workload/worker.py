"""A queue worker: companion target ``workload.worker:main``, or ``python -m workload.worker``.

Run standalone, it imports the whole app first (a cold start), as RQ, Celery
or a management command does under supervisord or circus.
"""

from __future__ import annotations

from workload import app  # noqa: F401  (the whole service: what a real worker imports)
from workload.background import idle_loop, process_name


def _job(n: int) -> dict:
    job = {"id": n, "kind": "send-receipt", "args": [n, n * 2, str(n)],
           "meta": {"attempt": 1, "queue": "default"}}
    job["self"] = job  # a reference cycle: only the cyclic GC frees it
    return job


def main() -> None:
    idle_loop(process_name("worker"), _job)


if __name__ == "__main__":
    main()
