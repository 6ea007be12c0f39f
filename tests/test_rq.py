"""forksafe.rq against real ``rq worker`` processes (burst mode), PostgreSQL and MariaDB.

RQ's work horse ends with ``os._exit()``: a plain worker abandons one server session per
job. The server's own counter (PostgreSQL ``sessions_abandoned``, MariaDB ``Aborted_clients``)
tells a clean close from an abandoned one. The warm-shutdown tests need Redis only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rq.worker import BaseWorker, RoundRobinWorker

from forksafe.rq import WorkerMixin
from tests.harness.queues import (
    REDIS_URL,
    python_module,
    require_heavy_driver,
    require_redis,
    run_worker,
    unique_name,
    worker_env,
)
from tests.harness.sessions import settled_abandoned


@pytest.fixture
def rq_queue(driver: str) -> Iterator[Any]:
    """A fresh RQ queue in the tests' Redis database; deleted afterwards."""
    require_heavy_driver(driver)
    require_redis()
    from redis import Redis
    from rq import Queue

    redis = Redis.from_url(REDIS_URL)
    queue = Queue(unique_name("rq"), connection=redis)
    yield queue
    queue.delete(delete_jobs=True)
    redis.close()


def _work(queue: Any, driver: str, worker_class: str, **env: str) -> str:
    args = python_module(
        "rq.cli", "worker", "--burst", "--url", REDIS_URL, "--worker-class", worker_class
    )
    return run_worker([*args, queue.name], worker_env(driver, **env))


def _enqueue_queries(queue: Any, driver: str, count: int) -> list[Any]:
    jobs = [queue.enqueue("tests.queues.jobs.query", "default") for _ in range(count)]
    if driver == "psycopg":  # a native pool (min_size 2) built in the horse
        jobs.append(queue.enqueue("tests.queues.jobs.query", "pooled"))
    return jobs


def _finished(jobs: list[Any], output: str) -> list[Any]:
    for job in jobs:
        job.refresh()
        assert job.get_status() == "finished", output[-4000:]
    return [tuple(job.return_value()) for job in jobs]


@pytest.mark.parametrize("worker_class", ["forksafe.rq.Worker", "forksafe.rq.SpawnWorker"])
def test_work_horses_close_their_sessions_instead_of_abandoning_them(
    db: None, rq_queue: Any, driver: str, worker_class: str
) -> None:
    before = settled_abandoned()
    jobs = _enqueue_queries(rq_queue, driver, 4)
    output = _work(rq_queue, driver, worker_class)
    seen = _finished(jobs, output)
    assert len({pid for pid, _ in seen}) == len(jobs)  # a horse per job
    assert settled_abandoned() == before, output[-4000:]


def test_control_plain_rq_worker_abandons_one_session_per_job(
    db: None, rq_queue: Any, driver: str
) -> None:
    before = settled_abandoned()
    jobs = [rq_queue.enqueue("tests.queues.jobs.query", "default") for _ in range(3)]
    output = _work(rq_queue, driver, "rq.worker.Worker")
    _finished(jobs, output)
    assert settled_abandoned() == before + 3, output[-4000:]


def test_simple_worker_reuses_one_session_and_drops_it_after_a_timed_out_query(
    db: None, rq_queue: Any, driver: str
) -> None:
    """No fork: the between-job rules; a JobTimeoutException mid-query closes that session."""
    before = settled_abandoned()
    first = [rq_queue.enqueue("tests.queues.jobs.query", "default") for _ in range(3)]
    slow = rq_queue.enqueue("tests.queues.jobs.slow_query", 3, job_timeout=1)
    after = rq_queue.enqueue("tests.queues.jobs.query", "default")
    output = _work(rq_queue, driver, "forksafe.rq.SimpleWorker", FORKSAFE_TEST_CONN_MAX_AGE="None")
    seen = _finished(first, output)
    assert len(set(seen)) == 1, seen  # one process, one session, reused across jobs
    slow.refresh()
    assert slow.get_status() == "failed", output[-4000:]
    ((pid, backend),) = set(seen)
    assert _finished([after], output) != [(pid, backend)]  # succeeded, on a new session
    assert tuple(after.return_value())[0] == pid
    assert settled_abandoned() == before, output[-4000:]


# --- warm shutdown: the pub/sub thread -----------------------------------------------------


@pytest.fixture
def redis_connection() -> Iterator[Any]:
    """A client of the tests' Redis (pub/sub only: no keys are written)."""
    require_redis()
    from redis import Redis

    redis = Redis.from_url(REDIS_URL)
    yield redis
    redis.close()


def _new_worker(worker_class: str, redis: Any) -> Any:
    from django.utils.module_loading import import_string
    from rq import Queue

    return import_string(worker_class)(
        [Queue(unique_name("rq"), connection=redis)], connection=redis
    )


def _reply_read_first(monkeypatch: pytest.MonkeyPatch, pubsub: Any) -> None:
    """Force the race: UNSUBSCRIBE returns once the pub/sub thread has read its reply."""
    original = pubsub.unsubscribe

    def unsubscribe(*args: Any) -> Any:
        result = original(*args)
        deadline = time.monotonic() + 2
        while pubsub.subscribed and time.monotonic() < deadline:  # cleared by the reply
            time.sleep(0.005)
        return result

    monkeypatch.setattr(pubsub, "unsubscribe", unsubscribe)


def _seconds_to_unsubscribe(unsubscribe: Any, deadline: float) -> float:
    """How long ``unsubscribe()`` takes; fails the test if it still blocks after ``deadline``."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            unsubscribe()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    caller = threading.Thread(target=run, daemon=True)  # a hung one must not hold pytest
    start = time.monotonic()
    caller.start()
    caller.join(deadline)
    elapsed = time.monotonic() - start
    assert not caller.is_alive(), f"unsubscribe() still blocked after {deadline} s"
    assert not errors, errors
    return elapsed


class _RoundRobin(WorkerMixin, RoundRobinWorker):
    """A user's class with the mixin."""


@pytest.mark.nodb
@pytest.mark.parametrize(
    "worker_class",
    [
        "forksafe.rq.Worker",
        "forksafe.rq.SimpleWorker",
        "forksafe.rq.SpawnWorker",
        "tests.test_rq._RoundRobin",
    ],
)
def test_unsubscribe_returns_at_once_when_the_pubsub_thread_reads_the_reply_first(
    redis_connection: Any, monkeypatch: pytest.MonkeyPatch, worker_class: str
) -> None:
    """RQ 3.0.0's order hangs here for the thread's sleep_time (60 s); forksafe's does not."""
    worker = _new_worker(worker_class, redis_connection)
    worker.subscribe()  # RQ's own: a pub/sub thread with sleep_time=60
    thread = worker.pubsub_thread
    assert thread.is_alive()
    _reply_read_first(monkeypatch, worker.pubsub)
    assert _seconds_to_unsubscribe(worker.unsubscribe, deadline=5) < 1.5
    assert not thread.is_alive()


@pytest.mark.nodb
def test_control_rqs_own_unsubscribe_waits_out_the_pubsub_threads_sleep_time(
    redis_connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain ``rq.Worker``, subscribed as RQ does it but with sleep_time 3 s instead of 60."""
    worker = _new_worker("rq.worker.Worker", redis_connection)
    worker.pubsub = redis_connection.pubsub()
    worker.pubsub.subscribe(**{worker.pubsub_channel_name: worker.handle_payload})
    worker.pubsub_thread = worker.pubsub.run_in_thread(
        sleep_time=3, daemon=True, exception_handler=worker._pubsub_exception_handler
    )
    _reply_read_first(monkeypatch, worker.pubsub)
    assert _seconds_to_unsubscribe(worker.unsubscribe, deadline=10) > 2


@pytest.mark.nodb
def test_unsubscribe_leaves_it_to_rq_when_the_worker_has_no_pubsub_thread_attribute(
    redis_connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RQ that renamed ``pubsub_thread``/``pubsub`` keeps its own unsubscribe()."""
    calls: list[Any] = []
    monkeypatch.setattr(BaseWorker, "unsubscribe", lambda self: calls.append(self))
    worker = _new_worker("forksafe.rq.SimpleWorker", redis_connection)
    del worker.pubsub_thread
    worker.unsubscribe()
    assert calls == [worker]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_mixin_after_the_rq_class_is_a_type_error_saying_where_it_goes() -> None:
    from rq.worker import SimpleWorker

    from forksafe.rq import WorkerMixin

    with pytest.raises(TypeError, match=r"must come before .* class Mine\(WorkerMixin"):

        class Mine(SimpleWorker, WorkerMixin):
            pass
