"""The Socket.IO example: a python-socketio server as a companion of Gunicorn.

- ``sioexample.web:app`` is the Flask app that Gunicorn's HTTP workers serve; a
  request to it emits a Socket.IO event through Redis.
- ``sioexample.server:run_socketio`` is the companion: a Socket.IO server on a
  port of its own, subscribed to the same Redis channel, that delivers those
  events to the connected clients.
- ``sioexample.config`` holds the settings.

Nothing connects to Redis at import time: the Gunicorn master imports these
modules before it forks, and each process connects on first use.
"""
