"""RQ workers whose work horses close their connections instead of abandoning them.

RQ 3's ``Worker`` forks a *work horse* for every job (``SpawnWorker`` starts
one with ``posix_spawn``); the horse runs the job and ends with
``os._exit()``, so no driver says goodbye: one abandoned server session per
job (PostgreSQL "unexpected EOF on client connection", MariaDB "Aborted
connection"; django-rq issue 17), plus a native pool's ``min_size`` sessions.

Use one of these classes::

    rq worker --worker-class forksafe.rq.Worker          # RQ's CLI
    RQ = {"WORKER_CLASS": "forksafe.rq.Worker"}          # django-rq settings
    python manage.py rqworker --worker-class forksafe.rq.Worker

* :class:`Worker`, :class:`SpawnWorker`: the horse closes its own
  connections (all aliases) and any native pool it built after the job --
  after the result is stored -- and before ``os._exit``. A horse runs one
  job, so there is nothing to reuse: each job has a session of its own, as
  with plain RQ, and ends it cleanly.
* :class:`SimpleWorker` (no fork: jobs run in the worker process): the
  between-task rules (``forksafe._tasks``, as for Celery) apply around each job -- Django's
  rules (``CONN_MAX_AGE=None`` reuses one session across jobs), and a
  connection interrupted mid-query (``JobTimeoutException``) or used by a job
  that failed with a database error is closed before the next job.
* :class:`WorkerMixin` for other worker classes: ``class MyWorker(WorkerMixin,
  rq.worker.RoundRobinWorker)``. It must come first in the bases; placed after
  the RQ class it would do nothing, so that is a ``TypeError``.

Every class sets Django up when ``DJANGO_SETTINGS_MODULE`` is set (the
parent then forks horses that have it ready, as RQ's docs recommend for
performance) and calls ``forksafe.install()``, whose fork hooks make each
horse detach what it inherits.

A burst worker run from code (``worker.work(burst=True)`` in a test) runs
:class:`SimpleWorker` jobs in the calling thread: while that thread is inside
``transaction.atomic()`` (a ``TestCase``), the per-job rules are skipped.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Any

try:
    import rq.worker
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError("forksafe.rq needs RQ: pip install 'forksafe[rq]'", name=exc.name) from exc

from redis.client import PubSubWorkerThread
from redis.exceptions import ConnectionError as RedisConnectionError

from forksafe import _exit, _tasks
from forksafe._install import install as _install_hooks
from forksafe._setup import setup_django

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue

    _Base = rq.worker.BaseWorker
else:
    _Base = object

__all__ = ["SimpleWorker", "SpawnWorker", "Worker", "WorkerMixin"]


def _stop_takes_timeout() -> bool:
    """Whether ``PubSubWorkerThread.stop`` takes ``timeout`` (redis-py 8.x; it then also joins)."""
    try:
        return "timeout" in inspect.signature(PubSubWorkerThread.stop).parameters
    except (TypeError, ValueError):  # no signature to read (a stand-in, e.g. the docs' mocks)
        return False


# Earlier redis-py: stop() only clears the run flag.
_STOP_TAKES_TIMEOUT = _stop_takes_timeout()


class WorkerMixin(_Base):
    """Connection care for an RQ worker class; put it first in the bases."""

    _forksafe_error: BaseException | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        base = rq.worker.BaseWorker
        if base in mro and mro.index(base) < mro.index(WorkerMixin):
            raise TypeError(
                f"forksafe.rq.WorkerMixin must come before the RQ worker class in the bases"
                f" of {cls.__qualname__}, e.g. class {cls.__name__}(WorkerMixin, SimpleWorker)"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        setup_django()
        _install_hooks()
        _tasks.start_tracking()
        super().__init__(*args, **kwargs)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run the job (see RQ); in a horse, close its connections after it."""
        if self.is_horse:
            try:
                return super().perform_job(job, queue, execution)
            finally:
                _exit.close_own_connections()
        # A worker that runs jobs in its own process (SimpleWorker).
        if _tasks.in_transaction():
            # Run from code inside atomic (a test's burst worker): the caller's
            # connection is not ours to judge.
            return super().perform_job(job, queue, execution)
        _tasks.between_tasks()
        self._forksafe_error = None
        try:
            return super().perform_job(job, queue, execution)
        finally:
            error, self._forksafe_error = self._forksafe_error, None
            _tasks.between_tasks(error)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """Log the job's exception (see RQ); remember it for the between-job rules."""
        if len(exc_info) > 1 and isinstance(exc_info[1], BaseException):
            self._forksafe_error = exc_info[1]
        super().handle_exception(job, *exc_info)

    def unsubscribe(self) -> None:
        """Unsubscribe from the worker's pub/sub channel (see RQ), without hanging."""
        # RQ 3.0.0's unsubscribe(), the same steps in another order. RQ sends UNSUBSCRIBE and
        # then stops the thread: if the thread reads the reply first, it loops back into
        # get_message(timeout=60), which waits for a subscription, and redis-py 8.2.0's stop()
        # joins it without a timeout -- a warm shutdown hung up to 60 s (13 of 50). Clearing the
        # run flag first lets the reply end the loop.
        thread = getattr(self, "pubsub_thread", None)
        pubsub = getattr(self, "pubsub", None)
        if not isinstance(thread, PubSubWorkerThread) or pubsub is None:
            super().unsubscribe()  # type: ignore[no-untyped-call]  # not subscribed, or renamed
            return
        self.log.info(
            "Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name
        )
        if _STOP_TAKES_TIMEOUT:
            thread.stop(timeout=0)
        else:  # pragma: no cover - redis-py < 8
            thread.stop()
        # The thread may get a message and leave its loop first, closing the connection: the
        # subscription ended with it (seen under load in CI).
        with contextlib.suppress(RedisConnectionError):
            pubsub.unsubscribe()
        thread.join(timeout=1)
        pubsub.close()


class Worker(WorkerMixin, rq.worker.Worker):
    """``rq.Worker`` (a forked horse per job) whose horses close their connections."""


class SpawnWorker(WorkerMixin, rq.worker.SpawnWorker):
    """``rq.worker.SpawnWorker`` (``posix_spawn``) whose horses close their connections."""


class SimpleWorker(WorkerMixin, rq.worker.SimpleWorker):
    """``rq.SimpleWorker`` (jobs in the worker process) with per-job connection rules."""
