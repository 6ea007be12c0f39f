"""Settings of the worker subprocesses: the run's driver settings, plus what a test asks for.

``FORKSAFE_TEST_BASE_SETTINGS`` names the driver module (``tests.settings.psycopg``);
``FORKSAFE_TEST_CONN_MAX_AGE`` (``None`` or seconds) applies to the unpooled aliases.
"""

from __future__ import annotations

import importlib
import os

_base = importlib.import_module(os.environ["FORKSAFE_TEST_BASE_SETTINGS"])
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

_max_age = os.environ.get("FORKSAFE_TEST_CONN_MAX_AGE")
if _max_age is not None:
    for _alias in ("default", "other"):
        DATABASES[_alias] = {  # type: ignore[name-defined] # noqa: F821 - from the base module
            **DATABASES[_alias],  # type: ignore[name-defined] # noqa: F821
            "CONN_MAX_AGE": None if _max_age == "None" else int(_max_age),
        }

if os.environ.get("FORKSAFE_TEST_PLAIN"):
    # No forksafe at all in the worker (controls and benchmark baselines).
    INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "forksafe"]  # type: ignore[name-defined] # noqa: F821
