"""The Celery app of the worker tests; ``FORKSAFE_TEST_CELERY_MODE`` picks the connection rules.

* ``celery`` (default): Celery's own Django fixup, which closes every connection
  before and after every task;
* ``forksafe``: ``forksafe.celery.install(app)``;
* ``django-rules``: what Celery shipped from 2017 to 2025 and reverted (PR 9824):
  Django's ``close_old_connections()`` around each task, and nothing more.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from tests.queues import jobs

MODE = os.environ.get("FORKSAFE_TEST_CELERY_MODE", "celery")

app = Celery("forksafe_tests")
app.conf.update(
    broker_url=os.environ["FORKSAFE_TEST_REDIS_URL"],
    result_backend=os.environ["FORKSAFE_TEST_REDIS_URL"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

if MODE == "forksafe":
    import forksafe.celery

    forksafe.celery.install(app)
elif MODE == "django-rules":
    from django.db import close_old_connections

    import forksafe.celery

    def _replace_fixup_closing(**kwargs: Any) -> None:
        forksafe.celery._stop_fixup_closing(app)
        signals.task_prerun.connect(_django_rules, weak=False)
        signals.task_postrun.connect(_django_rules, weak=False)

    def _django_rules(**kwargs: Any) -> None:
        close_old_connections()

    signals.worker_init.connect(_replace_fixup_closing, weak=False)

# The RQ jobs, as tasks named after this module.
query = app.task(name=f"{__name__}.query")(jobs.query)
slow_query = app.task(name=f"{__name__}.slow_query", soft_time_limit=1)(jobs.slow_query)
database_error = app.task(name=f"{__name__}.database_error")(jobs.database_error)
