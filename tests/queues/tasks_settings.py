"""Settings of the ``db_worker`` subprocesses: ``tests.queues.settings`` plus django-tasks-db."""

from __future__ import annotations

from tests.queues.settings import *  # noqa: F403
from tests.queues.settings import INSTALLED_APPS as _APPS
from tests.queues.tasks_backend import APP, TASKS  # noqa: F401

INSTALLED_APPS = [*_APPS, APP]
