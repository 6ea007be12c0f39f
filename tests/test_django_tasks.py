"""forksafe.tasks against a real ``db_worker`` of django-tasks-db (Django 6.x), PostgreSQL, MariaDB.

Each test starts ``python -m django db_worker`` on a queue of its own
(``tests.queues.tasks_settings``), enqueues ``tests.queues.django_tasks_app`` tasks from this
process through the same database backend and reads their results there, then stops the
worker with ``SIGTERM``. Reuse is read from the server session ids the tasks report; clean
exits from the server's abandoned-session counter (PostgreSQL ``sessions_abandoned``,
MariaDB ``Aborted_clients``). Real workers run for psycopg and mysqlclient only.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import django
import pytest

from tests.harness.queues import DbTasksWorker, django_tasks_db_backend, worker_starter
from tests.harness.sessions import settled_abandoned

Start = Callable[..., DbTasksWorker]

NO_FRAMEWORK = f"Django {django.get_version()} has no django.tasks (Django 6.0 or later)"


@pytest.fixture(scope="module")
def tasks_db(django_db_setup: None) -> Iterator[None]:
    """This process enqueues through django-tasks-db: its app, its backend, its table."""
    if django.VERSION < (6, 0):
        pytest.skip(NO_FRAMEWORK)  # a version without the framework: not a missing server
    try:
        import django_tasks_db  # noqa: F401
    except ImportError:
        from tests.harness.ci import skip_or_fail

        skip_or_fail("django-tasks-db is not installed: pip install -e '.[test]'")
    with django_tasks_db_backend():
        yield


@pytest.fixture
def db_worker(tasks_db: None, db: None, driver: str) -> Iterator[Start]:
    """Start workers with ``db_worker(plain=..., ...)``; each is stopped at the end."""
    yield from worker_starter(DbTasksWorker, driver)


def _stopped(worker: DbTasksWorker, timeout: float = 30) -> tuple[int | None, str]:
    """Wait (at most ``timeout`` s) for the worker to exit by itself; its status and output."""
    assert worker.proc is not None
    try:
        status: int | None = worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        status = None
    output = worker.log(tail=None)[-6000:]
    worker.stop()
    return status, output


def _sigterm(worker: DbTasksWorker, timeout: float = 30) -> tuple[int | None, str]:
    """Stop the worker with one ``SIGTERM`` (a warm stop); its exit status and output."""
    status = worker.stop(timeout, signal.SIGTERM)
    return status, worker.log(tail=None)[-6000:]


def test_db_worker_reuses_its_session_and_abandons_none_at_a_sigterm_during_a_task(
    db_worker: Start,
) -> None:
    """``CONN_MAX_AGE=None``: one session for every task; the task under way finishes first."""
    before = settled_abandoned()
    worker = db_worker()
    seen = {worker.call("query") for _ in range(3)}
    assert len(seen) == 1, seen  # the same process, thread and session: reused
    running = worker.send("slow_query", 2)
    worker.wait(running, status="running")
    status, output = _sigterm(worker)
    assert status == 0, output
    assert worker.wait(running).status == "SUCCESSFUL", output
    assert settled_abandoned() == before, output


def test_a_task_interrupted_mid_query_is_followed_by_one_that_succeeds_on_a_new_session(
    db_worker: Start,
) -> None:
    """The interrupted connection is closed before db_worker records the failure with it."""
    before = settled_abandoned()
    worker = db_worker()
    pid, thread, backend = worker.call("query")
    assert worker.fail("interrupted_query", 5) == "TaskTimeout"
    after = worker.call("query")
    assert after[:2] == (pid, thread)  # the same worker...
    assert after[2] != backend  # ...on a new session: the interrupted one was closed
    assert worker.call("query") == after  # reused
    assert worker.fail("database_error") == "ProgrammingError"
    last = worker.call("query")
    assert last[:2] == (pid, thread) and last[2] != after[2]  # closed after the database error
    status, output = _sigterm(worker)
    assert status == 0, output
    assert settled_abandoned() == before, output


def test_control_without_forksafe_an_interrupted_query_ends_the_worker(
    db_worker: Start, driver: str
) -> None:
    """Plain db_worker writes the failure on the interrupted connection: the write fails, the
    exception leaves the worker, which exits; the task stays RUNNING."""
    worker = db_worker(plain=True)
    worker.call("query")
    interrupted = worker.send("interrupted_query", 5)
    status, output = _stopped(worker)
    assert status not in (0, None), output  # exited by itself, with an error
    assert "in set_failed" in output, output
    interrupted.refresh()
    assert interrupted.status == "RUNNING", output


def _second_sigterm_mid_query(worker: DbTasksWorker) -> tuple[int | None, str, Any]:
    """Send a 5 s query, then two ``SIGTERM`` while it runs; the exit status, output, result."""
    running = worker.send("slow_query", 5)
    worker.wait(running, status="running")
    time.sleep(0.3)  # inside the query
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    status, output = _sigterm(worker)
    return status, output, worker.wait(running)


def test_a_second_sigterm_mid_query_abandons_no_session(db_worker: Start, driver: str) -> None:
    """db_worker's forced stop (``SystemExit`` from its handler) during a query.

    psycopg waits in Python-visible steps: the first handler runs at once, the second raises
    ``SystemExit`` inside the query; forksafe closes that connection before db_worker records
    FAILED with a new one, and the worker exits 0. mysqlclient waits inside C: both signals
    reach Python as one pending handler call after the query, a warm stop: the task succeeds.
    Plain db_worker does the same here (psycopg cancels the query on ``SystemExit``, so the
    failure is written on a connection back in step): measured, see the guide.
    """
    before = settled_abandoned()
    status, output, result = _second_sigterm_mid_query(db_worker())
    assert status == 0, output
    if driver == "psycopg":
        assert "terminating current task" in output, output
        assert result.status == "FAILED", output
        assert result.errors[-1].exception_class_path == "builtins.SystemExit", output
    else:
        assert "terminating current task" not in output, output
        assert result.status == "SUCCESSFUL", output
    assert settled_abandoned() == before, output


def test_the_immediate_backend_leaves_the_callers_connection_alone(
    tasks_db: None, db: None
) -> None:
    """It runs the task in the caller (a request, a test): Django's rules are the caller's."""
    from django.db import connection
    from django.test import override_settings

    from forksafe import tasks
    from forksafe._sessions import backend_id
    from tests.queues import django_tasks_app, tasks_backend

    assert tasks.connected()  # the forksafe app connected the signals in ready()
    immediate = {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}
    with override_settings(TASKS={**tasks_backend.TASKS, "immediate": immediate}):
        mine = backend_id("default")
        # CONN_MAX_AGE=0: the rules after a worker's task would close this connection.
        assert connection.settings_dict["CONN_MAX_AGE"] == 0
        result = django_tasks_app.query.using(backend="immediate").enqueue()
        assert result.status == "SUCCESSFUL", result.errors
        assert result.return_value[2] == mine
        assert connection.connection is not None and backend_id("default") == mine


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_importing_forksafe_tasks_without_a_tasks_framework_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['django.tasks'] = sys.modules['django_tasks'] = None\n"
        "import forksafe.tasks"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "ImportError: forksafe.tasks needs Django's tasks framework: Django 6.0 or later"
        " (django.tasks), or the backport on earlier versions: pip install 'forksafe[tasks]'"
    ), proc.stderr


# --- django-tasks-rq: the backport's signals, a real rq worker -----------------------------


def _rq_burst(driver: str, worker_class: str, *, plain: bool) -> tuple[list[Any], str]:
    """Enqueue the sequence, run a burst ``rq worker`` over it; the refreshed results, output."""
    from django.test import override_settings

    from tests.harness.queues import (
        REDIS_URL,
        mode_env,
        python_module,
        run_worker,
        unique_name,
        worker_env,
    )
    from tests.queues import tasks_backend

    queue = unique_name("tasks-rq")
    overrides = tasks_backend.rq_settings(queue, REDIS_URL)
    with override_settings(INSTALLED_APPS=[*_apps(), tasks_backend.RQ_APP], **overrides):
        from tests.queues import django_tasks_rq_app as app

        sequence = [
            (app.query, ()),
            (app.query, ()),
            (app.interrupted_query, (5,)),
            (app.query, ()),
            (app.database_error, ()),
            (app.query, ()),
        ]
        results = [task.using(queue_name=queue).enqueue(*args) for task, args in sequence]
        env = worker_env(
            driver,
            **mode_env(plain=plain, conn_max_age="None"),
            DJANGO_SETTINGS_MODULE="tests.queues.tasks_rq_settings",
            FORKSAFE_TEST_TASKS_QUEUE=queue,
        )
        args = python_module(
            "rq.cli",
            "worker",
            "--burst",
            "--url",
            REDIS_URL,
            "--worker-class",
            worker_class,
            "--job-class",
            "django_tasks_rq.backend.Job",
            queue,
        )
        output = run_worker(args, env)
        for result in results:
            result.refresh()
    return results, output


def _apps() -> list[str]:
    from django.conf import settings

    return list(settings.INSTALLED_APPS)


@pytest.fixture
def tasks_rq(tasks_db: None, db: None, driver: str) -> None:
    from tests.harness.queues import require_heavy_driver, require_redis

    require_heavy_driver(driver)
    require_redis()
    try:
        import django_tasks_rq  # noqa: F401
    except ImportError:
        from tests.harness.ci import skip_or_fail

        skip_or_fail("django-tasks-rq is not installed: pip install -e '.[test]'")


@pytest.mark.usefixtures("tasks_rq")
def test_django_tasks_rq_jobs_in_rqs_own_simple_worker_get_the_rules(driver: str) -> None:
    """Plain ``rq.SimpleWorker``, the forksafe app: the backport's signals apply the rules."""
    before = settled_abandoned()
    results, output = _rq_burst(driver, "rq.worker.SimpleWorker", plain=False)
    statuses = [r.status for r in results]
    assert statuses == ["SUCCESSFUL", "SUCCESSFUL", "FAILED"] + ["SUCCESSFUL", "FAILED"] + [
        "SUCCESSFUL"
    ], output
    first, second, third, fourth = (results[i].return_value for i in (0, 1, 3, 5))
    assert first == second  # one session, reused (CONN_MAX_AGE=None)
    assert third[:2] == first[:2] and third[2] != first[2]  # closed after the interruption
    assert fourth[:2] == first[:2] and fourth[2] != third[2]  # closed after the database error
    assert settled_abandoned() == before, output


@pytest.mark.usefixtures("tasks_rq")
def test_control_without_forksafe_the_rq_job_after_an_interrupted_query_fails(driver: str) -> None:
    """Plain ``rq.SimpleWorker`` without the app: every later job gets the interrupted connection.

    psycopg: "another command is already in progress"; mysqlclient: "Commands out of sync".
    """
    results, output = _rq_burst(driver, "rq.worker.SimpleWorker", plain=True)
    assert [r.status for r in results[:3]] == ["SUCCESSFUL", "SUCCESSFUL", "FAILED"], output
    expected = "OperationalError" if driver == "psycopg" else "ProgrammingError"
    for result in results[3:]:  # plain queries, on the broken connection
        assert result.status == "FAILED", output
        assert result.errors[-1].exception_class_path == f"django.db.utils.{expected}", output
