"""The Flask app the HTTP workers serve: it sends tasks to either worker and reads results.

    POST /tasks       {"queue": "exec" | "forked", "x": 2, "y": 3} -> 202 {"id": ..., "url": ...}
    GET  /tasks/<id>  the task's state and, once done, its result
"""

from __future__ import annotations

import tasks
from celery.result import AsyncResult
from flask import Flask, jsonify, request

# One queue per worker companion (see gunicorn.conf.py).
QUEUES = ("exec", "forked")

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(
        endpoints=["POST /tasks", "GET /tasks/<id>"],
        queues=list(QUEUES),
        example='curl -X POST -H "Content-Type: application/json" '
                '-d \'{"queue": "forked", "x": 2, "y": 3}\' http://HOST/tasks',
    )


@app.post("/tasks")
def send():
    data = request.get_json(silent=True) or {}
    queue, x, y = data.get("queue"), data.get("x"), data.get("y")
    if queue not in QUEUES:
        return jsonify(error=f"queue must be one of {list(QUEUES)}"), 400
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y)):
        return jsonify(error="x and y must be whole numbers"), 400
    result = tasks.add.apply_async((x, y), queue=queue)
    return jsonify(id=result.id, url=f"/tasks/{result.id}"), 202


@app.get("/tasks/<task_id>")
def show(task_id: str):
    result = AsyncResult(task_id, app=tasks.app)
    # Celery cannot tell an unknown id from a task that waits: both are PENDING.
    body = {"id": task_id, "state": result.state, "result": None}
    if result.successful():
        body["result"] = result.result
    elif result.failed():
        body["error"] = repr(result.result)
    return jsonify(body)
