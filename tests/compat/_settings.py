"""Settings for Django's ``runtests.py``: ``default`` and ``other`` on one server.

The server comes from the variables the rest of the test-suite reads,
``FORKSAFE_TEST_POSTGRES_URL`` and ``FORKSAFE_TEST_MYSQL_URL``. Django's
runner creates ``test_<name>`` and ``test_<name>_other`` (and one clone of each
per parallel worker); the databases of the URL themselves are never used.
"""

from __future__ import annotations

from typing import Any

from forksafe._urls import database_settings
from tests.settings._base import MYSQL_URL, POSTGRES_URL


def settings_for(server: str) -> dict[str, Any]:
    """Module globals for a ``runtests.py --settings=`` module of ``server``."""
    url = {"postgresql": POSTGRES_URL, "mysql": MYSQL_URL}[server]
    default = database_settings(url)
    if server == "mysql":
        # The server's default character set may be latin1; Django's tests store
        # 4-byte characters (its own CI creates the test databases as utf8mb4 too).
        default["OPTIONS"] = {"charset": "utf8mb4"}
        default["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    other = {**default, "NAME": f"{default['NAME']}_other"}
    return {
        "DATABASES": {"default": default, "other": other},
        # As Django's tests/test_sqlite.py, which runtests.py's settings start from.
        "SECRET_KEY": "django_tests_secret_key",
        "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
        "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
        "USE_TZ": False,
        # Records the failing test ids for the gate to compare.
        "TEST_RUNNER": "tests.compat.runner.ReportingRunner",
    }
