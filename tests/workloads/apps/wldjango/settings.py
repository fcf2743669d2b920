"""A small Django project for django-q2's cluster: Redis broker, sqlite in $COMPANION_STATE."""

import os

SECRET_KEY = "workloads-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django_q"]
ROOT_URLCONF = "wldjango.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.path.join(os.environ["COMPANION_STATE"], "db.sqlite3")}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
Q_CLUSTER = {
    "name": "wl",
    "workers": 2,
    "redis": os.environ["WL_REDIS_URL"],
    "timeout": 60,
    "retry": 120,
    "catch_up": False,
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django-q": {"handlers": ["console"], "level": "INFO"}},
}
