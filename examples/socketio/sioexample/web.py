"""The Flask app the HTTP workers serve: it emits Socket.IO events from web requests.

    GET  /               a page that connects to the Socket.IO companion and
                         shows what arrives
    POST /api/announce   {"message": "...", "room": "optional"} -> 202; every
                         client (or those in the room) gets an "announcement"

The HTTP workers hold no Socket.IO connections: a write-only
``socketio.RedisManager`` publishes the event on Redis, and the Socket.IO
companion, subscribed to the same channel, delivers it.
"""

from __future__ import annotations

import html
import os
import time

import socketio
from flask import Flask, jsonify, request

from .config import CHANNEL, redis_url, socketio_bind

app = Flask(__name__)

_emitter: socketio.RedisManager | None = None
_emitter_pid: int | None = None


def emitter() -> socketio.RedisManager:
    """This process's write-only manager (it connects to Redis on first emit)."""
    global _emitter, _emitter_pid
    if _emitter is None or _emitter_pid != os.getpid():
        _emitter = socketio.RedisManager(redis_url(), channel=CHANNEL, write_only=True)
        _emitter_pid = os.getpid()
    return _emitter


@app.post("/api/announce")
def announce():
    data = request.get_json(silent=True) or request.form
    message = data.get("message")
    room = data.get("room") or None
    if not isinstance(message, str) or not message.strip():
        return jsonify(error='send {"message": "some text"}'), 400
    if room is not None and not isinstance(room, str):
        return jsonify(error="room must be a string"), 400
    event = {"message": message, "room": room, "at": time.time(), "web_pid": os.getpid()}
    emitter().emit("announcement", event, to=room)
    return jsonify(published=event), 202


_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>gunicorn-companion: Socket.IO example</title>
<h1>Announcements</h1>
<form id="form"><input id="message" placeholder="Say something" autofocus>
<button>Announce</button></form>
<p id="state">connecting to the Socket.IO companion on port {port}...</p>
<ul id="log"></ul>
<script src="https://cdn.socket.io/4.8.1/socket.io.min.js"></script>
<script>
const socket = io(location.protocol + "//" + location.hostname + ":{port}");
const log = (text) => {{
  const item = document.createElement("li");
  item.textContent = new Date().toLocaleTimeString() + "  " + text;
  document.getElementById("log").prepend(item);
}};
socket.on("connect", () => document.getElementById("state").textContent =
  "connected as " + socket.id);
socket.on("disconnect", () => document.getElementById("state").textContent = "disconnected");
socket.on("welcome", (data) => log("welcome from Socket.IO companion pid " + data.server_pid));
socket.on("announcement", (data) => log(data.message + "  (from web worker pid " +
  data.web_pid + ")"));
document.getElementById("form").addEventListener("submit", (event) => {{
  event.preventDefault();
  const input = document.getElementById("message");
  fetch("/api/announce", {{method: "POST", headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{message: input.value}})}});
  input.value = "";
}});
</script>
"""


@app.get("/")
def index():
    _, port = socketio_bind()
    return _PAGE.format(port=html.escape(str(port)))
