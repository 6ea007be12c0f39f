"""Django's test-suite on MariaDB/MySQL with ``forksafe.install(threads=True)``."""

from __future__ import annotations

import forksafe
from tests.compat._settings import settings_for

# Before anything connects, as the README tells users to.
forksafe.install(threads=True)

globals().update(settings_for("mysql"))
