"""The RQ example: a Flask app, RQ workers and an APScheduler scheduler beside Gunicorn.

- ``rqexample.web:app`` is the Flask app that Gunicorn's HTTP workers serve; it
  enqueues jobs and reads their results.
- ``rqexample.companions:run_worker`` (two instances) and
  ``rqexample.companions:run_scheduler`` (a singleton) are the companions.
- ``rqexample.jobs`` holds the job functions, ``rqexample.config`` the settings
  and the per-process Redis connection.

Nothing connects to Redis at import time: the Gunicorn master imports these
modules before it forks, and each process opens its own connection on first use.
"""
