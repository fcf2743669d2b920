"""A stand-in for a real Django service, used by the benchmarks.

``workload.wsgi`` is the web app Gunicorn serves (and preloads). It imports
what a typical API service imports at startup -- Django with a good share of
django.contrib, Django REST framework, SQLAlchemy's ORM, pydantic and requests
-- and builds module-level data the way real apps build caches and route
tables, so that a process that has imported it is 60-150 MB resident.

``workload.worker`` and ``workload.scheduler`` stand in for a queue worker and
a scheduler. Each is both a companion target (``workload.worker:main``) and a
standalone program (``python -m workload.worker``), as supervisord and circus
run them today: a cold start that imports the whole app first.

``workload.tiny`` holds the trivial app and target used where the benchmark
needs many processes and no realistic memory (200 and 500 programs).

Kept empty on purpose: importing this package must not import Django.
"""
