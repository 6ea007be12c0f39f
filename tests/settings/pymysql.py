"""Test run against the pymysql driver (``DJANGO_SETTINGS_MODULE=tests.settings.pymysql``)."""

from __future__ import annotations

from tests.settings._base import settings_for

globals().update(settings_for("pymysql"))
