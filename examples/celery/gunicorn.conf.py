# Gunicorn configuration for the Celery example of gunicorn-companion.
#
# Start Redis, then run, from the repository root,
#
#     gunicorn-companion serve -c examples/celery/gunicorn.conf.py
#
# The same Celery worker runs twice, each on a queue of its own: once exec'd as
# a new program (`celery-exec`), once forked from the preloaded master
# (`celery-forked`). `python examples/celery/memory.py` compares their memory.
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# On sys.path, so that `web` and `tasks` import whatever the current directory is.
pythonpath = HERE

# The Flask app: `app` in web.py.
wsgi_app = "web:app"

# Where to listen; override with EXAMPLE_BIND=host:port (the tests pick a free port).
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = 2

# Import the app, and through it Celery, kombu and redis, once in the master.
preload_app = True

# Name the processes "celery-example" in `ps` (needs the setproctitle package).
proc_name = "celery-example"

# The manager's control socket, for `gunicorn-companion status` and memory.py.
# The control commands read the same variable, so with it exported
# `gunicorn-companion status` needs no -s.
companion_control_socket = os.environ.get("GUNICORN_COMPANION_SOCKET") or os.path.join(
    tempfile.gettempdir(), f"celery-example-{os.getuid()}", "companions.sock"
)
# in a directory only we can write: /tmp itself is refused (docs/security.md)
os.makedirs(os.path.dirname(companion_control_socket), mode=0o700, exist_ok=True)

companion_workers = [
    # An exec companion: forked, then replaced by a new Python running Celery's
    # command line, exactly as supervisord would run it. It imports everything
    # again, in memory of its own. `sys.executable -m celery` rather than
    # `celery`, so that it is this virtualenv's Celery even when its bin/ is not
    # on PATH; `cwd` puts `tasks` on its sys.path.
    {
        "name": "celery-exec",
        "command": [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "--pool=solo", "--concurrency=1", "--queues=exec", "--hostname=exec@%h",
            "--without-mingle", "--without-gossip", "--loglevel=INFO",
        ],
        "cwd": HERE,
        # RUNNING once Celery's worker_ready signal fires (tasks.py calls
        # gunicorn_companion.ready()), not after a guessed startsecs.
        "wait_ready": True,
        # Celery's warm shutdown lets the running task finish.
        "stop_timeout": 30,
    },
    # A target companion: the same worker, started in the forked process by
    # tasks.run_worker, sharing the master's already-imported memory.
    {
        "name": "celery-forked",
        "target": "tasks:run_worker",
        "env": {"CELERY_QUEUE": "forked"},
        "wait_ready": True,
        "stop_timeout": 30,
    },
]
