"""python-socketio: a threading ``socketio.Server`` served by Werkzeug, with a
``RedisManager`` so the web app can emit to its clients.

The web app emits ``job`` to every client; a client answers with ``work``, whose
handler runs the job in the server. On SIGTERM the server stops accepting
(Werkzeug's ``shutdown``), then waits for the ``work`` handlers in progress:
python-socketio has no drain of its own, Werkzeug's handler threads are daemons.
"""

from __future__ import annotations

import os
import signal
import threading

import socketio
import wljobs
from werkzeug.serving import WSGIRequestHandler, make_server

import gunicorn_companion

CHANNEL = "wl-socketio"


def enqueue(token: str, seconds: float) -> None:
    emitter = socketio.RedisManager(wljobs.redis_url(), channel=CHANNEL, write_only=True)
    emitter.emit("job", {"token": token, "seconds": seconds})


class RequestHandler(WSGIRequestHandler):
    def connection_dropped(self, error, environ=None):
        # engineio ends a WebSocket by raising ConnectionError: the socket is
        # done with, so do not read the client's close frame as a new request.
        self.close_connection = True


def run_server() -> None:
    sio = socketio.Server(async_mode="threading",
                          client_manager=socketio.RedisManager(wljobs.redis_url(),
                                                               channel=CHANNEL))
    idle = threading.Condition()
    busy = [0]

    @sio.event
    def work(sid, data):
        with idle:
            busy[0] += 1
        try:
            wljobs.record(data["token"], data["seconds"])
        finally:
            with idle:
                busy[0] -= 1
                idle.notify_all()

    server = make_server("127.0.0.1", int(os.environ["WL_SOCKETIO_PORT"]),
                         socketio.WSGIApp(sio), threaded=True,
                         request_handler=RequestHandler)

    def stop(signum, frame):
        # shutdown() waits for serve_forever() to return: not from this handler,
        # which runs inside it.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    gunicorn_companion.ready()
    try:
        server.serve_forever()
    finally:
        with idle:
            idle.wait_for(lambda: busy[0] == 0)
        server.server_close()
