"""Settings of the example project.

``DATABASE_URL`` picks the database (default: an SQLite file beside this
project); ``postgresql+psycopg2://`` and ``mysql+pymysql://`` choose a driver,
as in ``forksafe demo``. ``EXAMPLE_CONN_MAX_AGE`` (default 600) is ``CONN_MAX_AGE``;
``EXAMPLE_POOL=1`` uses a pool instead (``CONN_MAX_AGE`` 0, as Django requires): Django's
native pool with psycopg 3, forksafe's (``forksafe.backends``) with the other drivers;
``EXAMPLE_POOL=dbcp`` uses django-db-connection-pool's (SQLAlchemy's ``QueuePool``).

Under ASGI (``asgi.py`` sets ``EXAMPLE_ASGI=1``) with ``EXAMPLE_FORKSAFE=1``, the
``forksafe`` app is installed, as the README recommends; ``EXAMPLE_FORKSAFE_THREADS``
(``0``/``1``) sets ``FORKSAFE["THREADS"]`` (unset: forksafe's default).
"""

from __future__ import annotations

import os
from pathlib import Path

from forksafe._urls import database_settings, select_driver, split_url

_HERE = Path(__file__).resolve().parent
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{_HERE.parent / 'example.sqlite3'}"

select_driver(split_url(DATABASE_URL)[1])
DATABASES = {"default": database_settings(DATABASE_URL)}
# Persistent connections, as most deployments have them: each worker keeps its session.
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("EXAMPLE_CONN_MAX_AGE", "600"))
_POOL = os.environ.get("EXAMPLE_POOL")
if _POOL in ("1", "dbcp"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    _vendor = DATABASES["default"]["ENGINE"].rpartition(".")[2]
    if _POOL == "dbcp":
        DATABASES["default"]["ENGINE"] = f"dj_db_conn_pool.backends.{_vendor}"
        DATABASES["default"]["POOL_OPTIONS"] = {"POOL_SIZE": 8, "MAX_OVERFLOW": 0}
    else:
        if split_url(DATABASE_URL)[1] != "psycopg":
            DATABASES["default"]["ENGINE"] = f"forksafe.backends.{_vendor}"
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 2, "max_size": 8}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

SECRET_KEY = "forksafe-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
if os.environ.get("EXAMPLE_FORKSAFE_APP") == "1":
    # The app's ready() installs forksafe and logs the server checks (W003 under uWSGI).
    INSTALLED_APPS.append("forksafe")
    FORKSAFE = {"THREADS": True}
elif os.environ.get("EXAMPLE_ASGI") == "1" and os.environ.get("EXAMPLE_FORKSAFE", "1") == "1":
    INSTALLED_APPS.append("forksafe")
    if os.environ.get("EXAMPLE_FORKSAFE_THREADS") in ("0", "1"):
        FORKSAFE = {"THREADS": os.environ["EXAMPLE_FORKSAFE_THREADS"] == "1"}
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "exampleproject.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "forksafe": {"handlers": ["console"], "level": "INFO"},
        # A view that fails says why in the server's log (DEBUG is off).
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
