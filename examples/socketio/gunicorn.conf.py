# Gunicorn configuration for the Socket.IO example of gunicorn-companion.
#
# Start Redis, then run, from the repository root,
#
#     gunicorn-companion serve -c examples/socketio/gunicorn.conf.py
#
# and open http://127.0.0.1:8000 in two browser windows.
import os

# The directory of this file (examples/socketio/): on sys.path, so that the
# `sioexample` package imports whatever the current directory is.
pythonpath = os.path.dirname(os.path.abspath(__file__))

# The Flask app: `app` in sioexample/web.py.
wsgi_app = "sioexample.web:app"

# Where the web app listens; override with EXAMPLE_BIND=host:port. The
# Socket.IO companion listens on SOCKETIO_BIND (default 127.0.0.1:8001).
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")

# Plain sync HTTP workers: they never hold a WebSocket, they only publish to Redis.
workers = 2

# Import Flask, python-socketio and redis once in the master.
preload_app = True

# Name the processes "socketio-example" in `ps` (needs the setproctitle package).
proc_name = "socketio-example"

companion_workers = [
    # The Socket.IO server, on a port of its own. wait_ready: it is RUNNING once
    # it has bound its port (sioexample/server.py calls gunicorn_companion.ready()).
    # One process: the Redis manager would let several share the clients (behind
    # a load balancer with sticky sessions), but one port can be bound only once.
    {
        "name": "socketio",
        "target": "sioexample.server:run_socketio",
        "wait_ready": True,
        "stop_timeout": 5,
    },
]
