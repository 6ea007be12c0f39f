"""Settings of the ``rq worker`` running django-tasks-rq jobs (``FORKSAFE_TEST_TASKS_QUEUE``)."""

from __future__ import annotations

import os

from tests.queues.settings import *  # noqa: F403
from tests.queues.settings import INSTALLED_APPS as _APPS
from tests.queues.tasks_backend import RQ_APP, rq_settings

globals().update(
    rq_settings(os.environ["FORKSAFE_TEST_TASKS_QUEUE"], os.environ["FORKSAFE_TEST_REDIS_URL"])
)
INSTALLED_APPS = [*_APPS, RQ_APP]
