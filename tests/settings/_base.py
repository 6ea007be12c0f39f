"""Shared test settings: one settings module per driver picks the database.

Server URLs can be overridden with ``FORKSAFE_TEST_POSTGRES_URL`` and
``FORKSAFE_TEST_MYSQL_URL`` (defaults: the loopback servers of the dev machine).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from forksafe._urls import database_settings, select_driver

POSTGRES_URL = os.environ.get(
    "FORKSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("FORKSAFE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
SQLITE_PATH = os.path.join(tempfile.gettempdir(), f"forksafe-tests-{os.getuid()}.sqlite3")


def url_for(driver: str) -> str:
    """The database URL (with ``+driver``) that a test run of ``driver`` uses."""
    scheme, _, rest = {
        "psycopg": POSTGRES_URL,
        "psycopg2": POSTGRES_URL,
        "mysqlclient": MYSQL_URL,
        "pymysql": MYSQL_URL,
        "sqlite3": f"sqlite:///{SQLITE_PATH}",
    }[driver].partition("://")
    return f"{scheme}+{driver}://{rest}"


def settings_for(driver: str) -> dict[str, Any]:
    """Module globals for a settings module testing ``driver``."""
    select_driver(driver)
    url = url_for(driver)
    default = database_settings(url)
    databases = {"default": default, "other": dict(default)}
    if driver == "psycopg":
        databases["pooled"] = {**default, "OPTIONS": {"pool": {"min_size": 2, "max_size": 4}}}
    return {
        "FORKSAFE_TEST_DRIVER": driver,
        "FORKSAFE_TEST_URL": url,
        "DATABASES": databases,
        "INSTALLED_APPS": ["django.contrib.contenttypes", "forksafe", "tests.testapp"],
        "USE_TZ": True,
        "SECRET_KEY": "forksafe-tests",
        "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
    }
