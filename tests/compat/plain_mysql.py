"""Django's test-suite on MariaDB/MySQL without forksafe: the baseline."""

from __future__ import annotations

from tests.compat._settings import settings_for

globals().update(settings_for("mysql"))
