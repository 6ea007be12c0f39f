"""forksafe.celery against real ``celery worker`` processes, PostgreSQL and MariaDB.

Each test starts a worker on a queue of its own (``tests.queues.celery_app``), calls its
tasks through Redis, then asks for a warm shutdown. Reuse is read from the server session
ids the tasks report; clean exits from the server's abandoned-session counter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.harness.queues import CeleryWorker, worker_starter
from tests.harness.scripts import ROOT
from tests.harness.sessions import settled_abandoned, wait_sessions_gone

Start = Callable[..., CeleryWorker]


@pytest.fixture
def celery_worker(driver: str) -> Iterator[Start]:
    """Start workers with ``celery_worker(mode=..., ...)``; each is stopped at the end."""
    yield from worker_starter(CeleryWorker, driver)


def _queries(worker: CeleryWorker, count: int) -> list[tuple[int, int]]:
    return [worker.call("query") for _ in range(count)]


def test_prefork_reuses_a_session_per_process_and_abandons_none_at_exit(
    db: None, celery_worker: Start, driver: str
) -> None:
    """CONN_MAX_AGE=None; --max-tasks-per-child recycles processes; then a warm shutdown."""
    before = settled_abandoned()
    worker = celery_worker(mode="forksafe", max_tasks_per_child=2)
    seen = _queries(worker, 1)
    # psycopg: the first process also builds a native pool (min_size 2).
    worker.call("query", "pooled" if driver == "psycopg" else "default")
    seen += _queries(worker, 2)
    output = worker.shutdown()
    by_pid: dict[int, set[int]] = {}
    for pid, backend in seen:
        by_pid.setdefault(pid, set()).add(backend)
    assert len(by_pid) == 2, by_pid  # recycled after 2 tasks
    assert all(len(backends) == 1 for backends in by_pid.values()), by_pid  # reused
    assert settled_abandoned() == before, output[-4000:]


@pytest.mark.parametrize(
    ("mode", "conn_max_age", "sessions"),
    [("celery", "None", 3), ("forksafe", "0", 3), ("forksafe", "None", 1)],
    ids=["celery-closes-per-task", "forksafe-django-default", "forksafe-persistent"],
)
def test_sessions_per_task_follow_conn_max_age_only_with_forksafe(
    db: None, celery_worker: Start, mode: str, conn_max_age: str, sessions: int
) -> None:
    worker = celery_worker(mode=mode, conn_max_age=conn_max_age)
    seen = _queries(worker, 3)
    assert len({pid for pid, _ in seen}) == 1
    assert len({backend for _, backend in seen}) == sessions, seen


@pytest.mark.parametrize("mode", ["forksafe", "django-rules"])
def test_soft_time_limit_inside_a_query_or_a_database_error_closes_that_connection(
    db: None, celery_worker: Start, mode: str
) -> None:
    """The next task on the same process succeeds, on a new session.

    ``django-rules`` is the control: Celery's reverted per-task reuse breaks the next task.
    """
    before = settled_abandoned()
    worker = celery_worker(mode=mode)
    pid, backend = worker.call("query")
    assert worker.fail("slow_query", 3) == "SoftTimeLimitExceeded"
    if mode == "django-rules":
        # The connection is still inside the interrupted query: Django cannot tell.
        assert worker.fail("query") in ("OperationalError", "ProgrammingError", "InterfaceError")
        return
    after = worker.call("query")
    assert after[0] == pid  # the same pool process...
    assert after[1] != backend  # ...on a new session: the interrupted one was closed
    assert worker.call("query") == after  # reused
    assert worker.fail("database_error") == "ProgrammingError"
    last = worker.call("query")
    assert last[0] == pid and last[1] != after[1]  # closed after the database error
    output = worker.shutdown()
    assert settled_abandoned() == before, output[-4000:]


def test_threads_pool_reuses_a_session_per_thread_and_abandons_none_at_warm_shutdown(
    db: None, celery_worker: Start, driver: str
) -> None:
    before = settled_abandoned()
    worker = celery_worker(mode="forksafe", pool="threads", concurrency=2)
    seen = _queries(worker, 8)
    if driver == "psycopg":
        worker.call("query", "pooled")
    output = worker.shutdown()
    assert len({pid for pid, _ in seen}) == 1
    assert len({backend for _, backend in seen}) <= 2, seen  # one per thread at most
    assert settled_abandoned() == before, output[-4000:]


def test_gevent_pool_closes_each_task_greenlets_session_when_it_ends(
    db: None, celery_worker: Start, driver: str
) -> None:
    """``--pool gevent`` (issue 21): each task runs in a greenlet of its own, with a session
    of its own (``CONN_MAX_AGE=None`` keeps it: Celery's per-task close is off). The greenlet
    closes it when the task ends; nothing is abandoned at the warm shutdown."""
    if driver == "mysqlclient":
        pytest.skip("mysqlclient blocks the worker under gevent (forksafe.W022)")
    pytest.importorskip("gevent")
    before = settled_abandoned()
    worker = celery_worker(mode="forksafe", pool="gevent", concurrency=4)
    seen = _queries(worker, 6)
    backends = {backend for _, backend in seen}
    assert len({pid for pid, _ in seen}) == 1
    wait_sessions_gone(backends)  # while the worker runs: the ended greenlets closed them
    output = worker.shutdown()
    assert settled_abandoned() == before, output[-4000:]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_install_takes_a_celery_app() -> None:
    import forksafe.celery

    with pytest.raises(TypeError, match="takes a Celery app, not 'proj'"):
        forksafe.celery.install("proj")


@pytest.mark.nodb
@pytest.mark.parametrize("library", ["celery", "rq", "dramatiq"])
def test_missing_library_is_an_import_error_naming_the_extra(library: str) -> None:
    code = (
        f"import json, sys\nsys.modules[{library!r}] = None\n"
        f"try:\n    import forksafe.{library}\nexcept ImportError as exc:\n"
        "    print(json.dumps(str(exc)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert f"pip install 'forksafe[{library}]'" in json.loads(proc.stdout)
