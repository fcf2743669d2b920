"""The job functions. RQ stores a job as the dotted name of its function and the
arguments, so a worker imports this module to run one (here it is already
imported: the workers are forked from the preloaded master)."""

from __future__ import annotations

import time
from collections import Counter

from rq import get_current_job

# The hash the periodic job updates; GET /ticks reads it.
TICKS_KEY = "rqexample:ticks"


def count_words(text: str) -> dict:
    """The job the web app enqueues: how many words, and the most common ones."""
    words = [word.strip(".,;:!?\"'()").lower() for word in text.split()]
    words = [word for word in words if word]
    top = [[word, count] for word, count in Counter(words).most_common(3)]
    return {"words": len(words), "top": top}


def tick() -> int:
    """The periodic job the scheduler enqueues: count the ticks, note who ran the last."""
    job = get_current_job()
    with job.connection.pipeline() as pipe:
        pipe.hincrby(TICKS_KEY, "count", 1)
        pipe.hset(TICKS_KEY, mapping={"last_at": time.time(), "last_worker": job.worker_name})
        count, _ = pipe.execute()
    return count
