"""Test run against the sqlite3 driver (``DJANGO_SETTINGS_MODULE=tests.settings.sqlite3``)."""

from __future__ import annotations

from tests.settings._base import settings_for

globals().update(settings_for("sqlite3"))
