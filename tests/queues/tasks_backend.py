"""The ``TASKS`` setting of the ``db_worker`` tests: the worker's and the test process's."""

from __future__ import annotations

from typing import Any

#: QUEUES=[]: any queue name (each test has its own).
TASKS: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}
}
APP = "django_tasks_db"


def rq_settings(queue: str, redis_url: str) -> dict[str, Any]:
    """Settings for django-tasks-rq (the ``django-tasks`` backport's signals) on ``queue``.

    ``default`` too: tasks are defined on it, and sent to ``queue`` with ``using()``.
    """
    queues = {name: {"URL": redis_url} for name in ("default", queue)}
    return {
        "RQ_QUEUES": queues,
        "TASKS": {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": list(queues)}},
    }


RQ_APP = "django_rq"
