"""The ``TASKS`` setting of the ``db_worker`` tests: the worker's and the test process's."""

from __future__ import annotations

from typing import Any

#: QUEUES=[]: any queue name (each test has its own).
TASKS: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}
}
APP = "django_tasks_db"
