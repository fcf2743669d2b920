# Gunicorn configuration for the gunicorn-companion demo.
#
# Run it from the repository root with
#
#     gunicorn-companion serve -c examples/demo/gunicorn.conf.py
#
# (or `make demo`). `serve` hands every argument to Gunicorn; gunicorn-companion
# adds the `companion_*` settings below. Plain `gunicorn -c ...` ignores those
# settings: it serves the page, but no job ever runs and no heartbeat comes.
import os

# The directory of this file (examples/demo/). Added to sys.path so that the
# `demo` package imports whatever the current directory is.
pythonpath = os.path.dirname(os.path.abspath(__file__))

# The WSGI app the HTTP workers serve: `app` in demo/web.py.
wsgi_app = "demo.web:app"

# Where to listen; override with DEMO_BIND=host:port (the tests pick a free port).
bind = os.environ.get("DEMO_BIND", "127.0.0.1:8000")

# Two HTTP workers, to show that several processes share the database (the
# page's footer tells which worker rendered it).
workers = 2

# Import the app (and, through it, demo.tasks and demo.db) once in the master,
# before forking. The HTTP workers, the companion manager and the companions are
# then all forked from that already-loaded memory, shared copy-on-write
# (without it companions still run, but import their code again).
preload_app = True

# Name the processes "demo" in `ps` (the process titles need the setproctitle
# package: `pip install gunicorn-companion[setproctitle]`).
proc_name = "demo"

# The companions: each is forked by the companion manager from the preloaded
# master and runs its target, a function that takes no arguments and blocks until
# it receives SIGTERM. The manager restarts a companion that exits on its own.
companion_workers = [
    # Runs the queued jobs, oldest first (demo/tasks.py: run_worker).
    {"name": "worker", "target": "demo.tasks:run_worker"},
    # Writes a heartbeat row every DEMO_HEARTBEAT_SECONDS (demo/tasks.py: run_scheduler).
    {"name": "scheduler", "target": "demo.tasks:run_scheduler"},
]

# The control socket, for `gunicorn-companion status`, `restart` and `tail`. Its
# directory (examples/demo/var/, where the database lives too) must not be
# writable by others; it is created here when missing. The CLI finds this
# setting by reading this file: run it with `-c examples/demo/gunicorn.conf.py`,
# or from examples/demo/ with no option at all.
_var = os.path.join(pythonpath, "var")
os.makedirs(_var, mode=0o700, exist_ok=True)
companion_control_socket = (os.environ.get("DEMO_CONTROL_SOCKET")
                            or os.path.join(_var, "companions.sock"))

# How many seconds a companion gets to exit after SIGTERM before it is killed
# with SIGKILL. Both demo targets stop within a second.
companion_stop_timeout = 5
