"""The companion: a python-socketio server on a port of its own.

A ``socketio.Server`` in threading mode, served by Werkzeug's threaded WSGI
server, with WebSocket support from simple-websocket: no monkey patching, no
event loop, nothing that a process forked from the Gunicorn master must be
careful about. Each connection takes a thread, which is plenty for a few hundred
clients; for thousands, run ``socketio.AsyncServer`` under an ASGI server in the
companion instead, the rest stays the same.

The server's client manager is a ``socketio.RedisManager``: it subscribes to the
Redis channel that the web app publishes to, and delivers each event to the
clients it names (all of them, or a room).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import socketio
from werkzeug.serving import WSGIRequestHandler, make_server

import gunicorn_companion

from .config import CHANNEL, allowed_origins, redis_url, socketio_bind

log = logging.getLogger("sioexample")


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, adjusted for long-lived Socket.IO connections."""

    def connection_dropped(self, error, environ=None):
        # python-engineio ends a WebSocket connection by raising ConnectionError.
        # The socket is done with: don't read what the client sent last (its
        # close frame) as the next HTTP request, which logs "Bad request syntax".
        self.close_connection = True

    def log_request(self, code="-", size="-"):
        # Not one line per long-polling request: connect() and disconnect()
        # below log the connections; errors are still logged.
        pass


def create_server() -> socketio.Server:
    """The Socket.IO server with its handlers; nothing is connected yet."""
    sio = socketio.Server(
        async_mode="threading",
        client_manager=socketio.RedisManager(redis_url(), channel=CHANNEL),
        cors_allowed_origins=allowed_origins(),
    )

    @sio.event
    def connect(sid, environ, auth):
        log.info("client %s connected", sid)
        sio.emit("welcome", {"sid": sid, "server_pid": os.getpid()}, to=sid)

    @sio.event
    def join(sid, data):
        """A client asks to join a room: ``emit("join", {"room": "news"})``."""
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str) or not room:
            return {"ok": False, "error": "send {'room': 'name'}"}
        sio.enter_room(sid, room)
        log.info("client %s joined room %r", sid, room)
        return {"ok": True, "room": room}  # the client's callback gets this

    @sio.event
    def disconnect(sid, reason=None):
        log.info("client %s disconnected (%s)", sid, reason)

    return sio


def run_socketio() -> None:
    """Companion target: serve Socket.IO on ``$SOCKETIO_BIND`` until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="socketio %(process)d: %(message)s")
    host, port = socketio_bind()
    sio = create_server()
    server = make_server(host, port, socketio.WSGIApp(sio), threaded=True,
                         request_handler=RequestHandler)

    def stop(signum, frame):
        log.info("%s received, exiting", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return, so not from here
        # (this handler runs in the main thread, inside serve_forever).
        threading.Thread(target=server.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on http://%s:%d", host, port)
    # The port is bound: the companion is RUNNING (wait_ready: True).
    gunicorn_companion.ready()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        sio.shutdown()
