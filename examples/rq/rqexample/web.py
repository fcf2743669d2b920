"""The Flask app the HTTP workers serve: it enqueues jobs and reads their results.

    POST /jobs          {"text": "..."} (JSON or form) -> 202 {"id": ..., "url": "/jobs/<id>"}
    GET  /jobs/<id>     the job's status, result and the worker that ran it
    GET  /ticks         what the periodic job has done so far
    GET  /workers       the RQ workers registered in Redis
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job

from . import jobs
from .config import QUEUE_NAME, redis

app = Flask(__name__)


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


@app.get("/")
def index():
    return jsonify(
        endpoints=["POST /jobs", "GET /jobs/<id>", "GET /ticks", "GET /workers"],
        example='curl -X POST -H "Content-Type: application/json" '
                '-d \'{"text": "to be or not to be"}\' http://HOST/jobs',
    )


@app.post("/jobs")
def enqueue():
    data = request.get_json(silent=True) or request.form
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        return jsonify(error='send {"text": "some words"}'), 400
    job = Queue(QUEUE_NAME, connection=redis()).enqueue(jobs.count_words, text, result_ttl=600)
    return jsonify(id=job.id, url=f"/jobs/{job.id}"), 202


@app.get("/jobs/<job_id>")
def show(job_id: str):
    try:
        job = Job.fetch(job_id, connection=redis())
    except NoSuchJobError:
        return jsonify(error=f"no job {job_id}"), 404
    status = job.get_status()
    return jsonify(
        id=job.id,
        status=str(status.value if hasattr(status, "value") else status),
        result=job.return_value(),
        worker=job.worker_name,
        enqueued_at=_iso(job.enqueued_at),
        ended_at=_iso(job.ended_at),
    )


@app.get("/ticks")
def ticks():
    raw = redis().hgetall(jobs.TICKS_KEY)
    if not raw:
        return jsonify(count=0, last_at=None, last_worker=None)
    return jsonify(
        count=int(raw[b"count"]),
        last_at=float(raw[b"last_at"]),
        last_worker=raw[b"last_worker"].decode(),
    )


@app.get("/workers")
def workers():
    found = Worker.all(connection=redis())
    return jsonify(workers=sorted(
        ({"name": w.name, "state": str(w.get_state()), "pid": w.pid,
          "queues": w.queue_names()} for w in found),
        key=lambda w: w["name"],
    ))
