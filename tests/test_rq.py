"""forksafe.rq against real ``rq worker`` processes (burst mode), PostgreSQL and MariaDB.

RQ's work horse ends with ``os._exit()``: a plain worker abandons one server session per
job. The server's own counter (PostgreSQL ``sessions_abandoned``, MariaDB ``Aborted_clients``)
tells a clean close from an abandoned one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

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


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_mixin_after_the_rq_class_is_a_type_error_saying_where_it_goes() -> None:
    from rq.worker import SimpleWorker

    from forksafe.rq import WorkerMixin

    with pytest.raises(TypeError, match=r"must come before .* class Mine\(WorkerMixin"):

        class Mine(SimpleWorker, WorkerMixin):
            pass
