"""The web app Gunicorn serves: ``workload.wsgi:application``."""

from django.core.wsgi import get_wsgi_application

from workload import app as _app  # noqa: F401  (the whole service, imported at startup)

application = get_wsgi_application()
