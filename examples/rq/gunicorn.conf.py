# Gunicorn configuration for the RQ example of gunicorn-companion.
#
# Start Redis, then run, from the repository root,
#
#     gunicorn-companion serve -c examples/rq/gunicorn.conf.py
#
# `serve` hands every argument to Gunicorn; gunicorn-companion adds the
# `companion_*` settings below.
import os

# The directory of this file (examples/rq/): on sys.path, so that the
# `rqexample` package imports whatever the current directory is.
pythonpath = os.path.dirname(os.path.abspath(__file__))

# The Flask app: `app` in rqexample/web.py.
wsgi_app = "rqexample.web:app"

# Where to listen; override with EXAMPLE_BIND=host:port (the tests pick a free port).
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = 2

# Import the app, rq, redis and APScheduler once in the master; the HTTP workers,
# the companion manager and the companions are forked from that memory.
preload_app = True

# Name the processes "rq-example" in `ps` (needs the setproctitle package).
proc_name = "rq-example"

companion_workers = [
    # Two RQ workers, rq-worker:0 and rq-worker:1, on the `default` queue. RQ's
    # warm shutdown lets a running job finish, so give them time to.
    {
        "name": "rq-worker",
        "target": "rqexample.companions:run_worker",
        "processes": 2,
        "stop_timeout": 30,
    },
    # Enqueues the periodic `tick` job. singleton: never two of it at once, not
    # even while an old and a new master overlap during a hot upgrade (USR2),
    # so no tick is ever enqueued twice.
    {
        "name": "scheduler",
        "target": "rqexample.companions:run_scheduler",
        "singleton": True,
    },
]
