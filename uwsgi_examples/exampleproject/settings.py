"""Settings of the example project.

``DATABASE_URL`` picks the database (default: an SQLite file beside this
project); ``postgresql+psycopg2://`` and ``mysql+pymysql://`` choose a driver,
as in ``forksafe demo``.
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
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

SECRET_KEY = "forksafe-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "exampleproject.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"forksafe": {"handlers": ["console"], "level": "INFO"}},
}
