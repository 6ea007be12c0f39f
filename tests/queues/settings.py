"""Settings of the worker subprocesses: the run's driver settings, plus what a test asks for.

``FORKSAFE_TEST_BASE_SETTINGS`` names the driver module (``tests.settings.psycopg``);
``FORKSAFE_TEST_CONN_MAX_AGE`` (``None`` or seconds) applies to the unpooled aliases;
``FORKSAFE_TEST_PLAIN`` leaves forksafe's Django app out (controls, benchmark baselines).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

_base = importlib.import_module(os.environ["FORKSAFE_TEST_BASE_SETTINGS"])
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})
DATABASES: dict[str, dict[str, Any]] = dict(_base.DATABASES)
INSTALLED_APPS: list[str] = list(_base.INSTALLED_APPS)

_max_age = os.environ.get("FORKSAFE_TEST_CONN_MAX_AGE")
if _max_age is not None:
    for _alias in ("default", "other"):
        DATABASES[_alias] = {
            **DATABASES[_alias],
            "CONN_MAX_AGE": None if _max_age == "None" else int(_max_age),
        }
if os.environ.get("FORKSAFE_TEST_PLAIN"):
    INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "forksafe"]
