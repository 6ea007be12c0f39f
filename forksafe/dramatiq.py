"""Dramatiq workers that reuse connections safely between messages and close them when they stop.

Add the middleware to the broker, in place of django_dramatiq's
``DbConnectionsMiddleware``::

    broker.add_middleware(forksafe.dramatiq.ConnectionsMiddleware())

    DRAMATIQ_BROKER = {                      # django_dramatiq settings
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "MIDDLEWARE": [
            ...,
            "forksafe.dramatiq.ConnectionsMiddleware",
        ],
    }

In each worker thread (``dramatiq --processes P --threads T``):

* around each message, the rules of ``forksafe.celery``
  (``forksafe._tasks.between_tasks``): Django's request-boundary rules, so
  ``CONN_MAX_AGE=None`` (or seconds) keeps one session per worker thread and
  Django's default ``0`` closes after each message; a connection whose query
  was interrupted by an exception that is not a database error is closed
  before the next message -- Dramatiq's ``TimeLimitExceeded`` and
  ``Shutdown`` are raised asynchronously inside the worker thread
  (``PyThreadState_SetAsyncExc``), possibly in the middle of
  ``cursor.execute``, where Django sees a healthy connection -- and so are a
  message's connections when it fails with a database error;
* when the worker stops (``SIGTERM``, ``SIGINT``, ``Worker.stop()``), each
  worker thread closes its connections before it ends, and the worker
  process's main thread then closes its own and the native pools
  (``OPTIONS={"pool": ...}``): Dramatiq's worker processes end with
  ``os._exit`` (multiprocessing), which says no goodbye.

Creating the middleware calls ``forksafe.install()``: worker processes forked
from a process that holds connections detach what they inherit. The
middleware refuses to start a worker (one-line :class:`ConfigurationError`)
when the broker holds it twice or beside ``DbConnectionsMiddleware``: both
would close connections around each message, each behind the other's back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

try:
    from dramatiq.middleware import Middleware, MiddlewareError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "forksafe.dramatiq needs Dramatiq: pip install 'forksafe[dramatiq]'", name=exc.name
    ) from exc

from forksafe import _exit, _tasks, _thread_guard
from forksafe._install import install as _install_hooks

if TYPE_CHECKING:
    from dramatiq.broker import Broker, MessageProxy
    from dramatiq.worker import Worker, WorkerThread

logger = logging.getLogger("forksafe")

__all__ = ["ConfigurationError", "ConnectionsMiddleware"]

# Middleware that closes connections around messages too (by class name: django_dramatiq
# is optional). https://github.com/Bogdanp/django_dramatiq/blob/master/django_dramatiq/middleware.py
_RIVALS = {"django_dramatiq.middleware.DbConnectionsMiddleware"}


class ConfigurationError(MiddlewareError):
    """The broker's middleware would close connections twice."""


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class ConnectionsMiddleware(Middleware):
    """Apply forksafe's between-task rules to each message; close connections at worker stop."""

    def __init__(self) -> None:
        _install_hooks()

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Refuse a broker that would close connections twice; start watching queries."""
        # emit_before re-raises a MiddlewareError: Worker.start() fails before any thread runs.
        ours = [m for m in broker.middleware if isinstance(m, ConnectionsMiddleware)]
        if len(ours) > 1:
            raise ConfigurationError(
                "forksafe.dramatiq.ConnectionsMiddleware is added to the broker"
                f" {len(ours)} times; add it once"
            )
        rivals = [_qualname(m) for m in broker.middleware if _qualname(m) in _RIVALS]
        if rivals:
            raise ConfigurationError(
                f"forksafe.dramatiq.ConnectionsMiddleware replaces {rivals[0]}:"
                " remove that one from the broker's middleware"
            )
        _tasks.start_tracking()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Apply the rules before the message runs."""
        _tasks.between_tasks()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Apply the rules after the message, closing what its exception says is broken."""
        _tasks.between_tasks(exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Apply the rules after a skipped message."""
        _tasks.between_tasks()

    def before_worker_thread_shutdown(self, broker: Broker, thread: WorkerThread) -> None:
        """Close the ending worker thread's connections, in that thread."""
        _thread_guard.close_thread_connections(in_atomic="close")

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Close the main thread's connections and the native pools once the threads ended."""
        _exit.close_own_connections()
