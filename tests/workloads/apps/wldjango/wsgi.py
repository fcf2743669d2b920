"""The Django project's WSGI app; importing it (preload_app) migrates the sqlite db."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wldjango.settings")

import django
from django.core.management import call_command
from django.db import connections

django.setup()
call_command("migrate", verbosity=0)
connections.close_all()  # nothing open crosses the fork

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()


def run_cluster() -> None:
    """Companion target: django-q2's documented entry point, ``manage.py qcluster``."""
    call_command("qcluster")

