"""Settings from the environment, read when used (each process sees its own)."""

from __future__ import annotations

import os

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_SOCKETIO_BIND = "127.0.0.1:8001"

# The Redis pub/sub channel between the emitters (the web app) and the
# Socket.IO server(s). The same on both sides.
CHANNEL = "sioexample"


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def _host_port(value: str, variable: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{variable} must look like HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def web_bind() -> tuple[str, int]:
    """Where Gunicorn serves the web app: ``$EXAMPLE_BIND``."""
    return _host_port(os.environ.get("EXAMPLE_BIND") or DEFAULT_BIND, "EXAMPLE_BIND")


def socketio_bind() -> tuple[str, int]:
    """Where the Socket.IO companion listens: ``$SOCKETIO_BIND``."""
    return _host_port(os.environ.get("SOCKETIO_BIND") or DEFAULT_SOCKETIO_BIND, "SOCKETIO_BIND")


def allowed_origins() -> list[str] | str:
    """The origins (pages) allowed to connect to the Socket.IO server.

    ``$SOCKETIO_CORS_ORIGINS`` (comma-separated, or ``*`` for any). By default the
    web app's origin, which is another port and so another origin than the
    Socket.IO server's, and the server's own (python-socketio's client sends that
    one). With a loopback or wildcard host, both ``127.0.0.1`` and ``localhost``.
    """
    configured = os.environ.get("SOCKETIO_CORS_ORIGINS", "").strip()
    if configured == "*":
        return "*"
    if configured:
        return [origin.strip() for origin in configured.split(",") if origin.strip()]
    origins = set()
    for host, port in (web_bind(), socketio_bind()):
        hosts = {host}
        if host in ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1"):
            hosts |= {"127.0.0.1", "localhost"}
        origins |= {f"http://{name}:{port}" for name in hosts}
    return sorted(origins)
