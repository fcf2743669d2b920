"""A small gunicorn-companion demo: a web app, a job worker and a scheduler sharing SQLite.

- ``demo.web:app`` is the WSGI app that Gunicorn's HTTP workers serve.
- ``demo.tasks:run_worker`` and ``demo.tasks:run_scheduler`` are the companions.
- ``demo.db`` holds the SQLite helpers that all of them use.

Nothing here opens a database connection at import time: the Gunicorn master
imports (preloads) these modules and then forks, and an SQLite connection must
never be shared across a fork. Every process opens its own.
"""
