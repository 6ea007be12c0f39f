"""Test run against mysqlclient (``DJANGO_SETTINGS_MODULE=tests.settings.mysqlclient``)."""

from __future__ import annotations

from tests.settings._base import settings_for

globals().update(settings_for("mysqlclient"))
