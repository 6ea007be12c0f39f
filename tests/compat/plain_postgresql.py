"""Django's test-suite on PostgreSQL without forksafe: the baseline."""

from __future__ import annotations

from tests.compat._settings import settings_for

globals().update(settings_for("postgresql"))
