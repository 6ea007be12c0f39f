"""A plain RQ worker that sets Django up before forking, as django-rq's ``rqworker`` does."""

from __future__ import annotations

from typing import Any

import rq.worker

from tests.queues.jobs import _django


class DjangoWorker(rq.worker.Worker):
    """``rq.Worker`` whose horses inherit a set-up Django (no forksafe)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _django()
        super().__init__(*args, **kwargs)
