"""Test run against the psycopg driver (``DJANGO_SETTINGS_MODULE=tests.settings.psycopg``)."""

from __future__ import annotations

from tests.settings._base import settings_for

globals().update(settings_for("psycopg"))
