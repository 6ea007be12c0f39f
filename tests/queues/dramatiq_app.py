"""The broker module of the Dramatiq worker tests (``dramatiq tests.queues.dramatiq_app``).

``FORKSAFE_TEST_DRAMATIQ_MODE`` picks the connection care:

* ``forksafe`` (default): ``forksafe.dramatiq.ConnectionsMiddleware``;
* ``django``: the control, a copy of django_dramatiq's ``DbConnectionsMiddleware``
  (``close_old_connections()`` around each message, ``connections.close_all()`` when a
  thread or the worker stops).

The actors listen on ``FORKSAFE_TEST_DRAMATIQ_QUEUE`` (one queue per test) and store their
results (and failures: no retries) in Redis.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from tests.queues import jobs

MODE = os.environ.get("FORKSAFE_TEST_DRAMATIQ_MODE", "forksafe")
QUEUE = os.environ.get("FORKSAFE_TEST_DRAMATIQ_QUEUE", "forksafe-dramatiq")
REDIS_URL = os.environ["FORKSAFE_TEST_REDIS_URL"]


class DjangoConnections(Middleware):
    """django_dramatiq's DbConnectionsMiddleware (0.15), as users run it today."""

    def _close_old_connections(self, *args: Any, **kwargs: Any) -> None:
        from django import db

        db.close_old_connections()

    before_process_message = _close_old_connections
    after_process_message = _close_old_connections

    def _close_connections(self, *args: Any, **kwargs: Any) -> None:
        from django import db

        db.connections.close_all()

    before_consumer_thread_shutdown = _close_connections
    before_worker_thread_shutdown = _close_connections
    before_worker_shutdown = _close_connections


def _care() -> Middleware:
    if MODE == "django":
        return DjangoConnections()
    import forksafe.dramatiq

    return forksafe.dramatiq.ConnectionsMiddleware()


broker = RedisBroker(url=REDIS_URL)  # type: ignore[no-untyped-call]
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))  # type: ignore[no-untyped-call]
broker.add_middleware(_care())
dramatiq.set_broker(broker)
jobs._django()

_options: dict[str, Any] = {"queue_name": QUEUE, "store_results": True, "max_retries": 0}


@dramatiq.actor(**_options)  # type: ignore[untyped-decorator]
def query(alias: str = "default") -> tuple[int, int, int]:
    """Which process, thread and server session ran this message."""
    pid, backend = jobs.query(alias)
    return pid, threading.get_ident(), backend


@dramatiq.actor(time_limit=1000, **_options)
def slow_query(seconds: int) -> None:
    """A query that outlives the actor's time limit."""
    jobs.slow_query(seconds)


@dramatiq.actor(notify_shutdown=True, **_options)
def shutdown_query(seconds: int) -> None:
    """A query the worker's stop interrupts (``Shutdown``)."""
    jobs.slow_query(seconds)


@dramatiq.actor(**_options)  # type: ignore[untyped-decorator]
def database_error() -> None:
    """A query the server refuses."""
    jobs.database_error()
