"""Test run against the psycopg2 driver (``DJANGO_SETTINGS_MODULE=tests.settings.psycopg2``)."""

from __future__ import annotations

from tests.settings._base import settings_for

globals().update(settings_for("psycopg2"))
