"""forksafe.huey against real ``huey_consumer`` workers (threads, processes), PostgreSQL, MariaDB.

Each test starts a consumer on a Huey of its own (``tests.queues.huey_app``), enqueues tasks
through Redis and reads their results there, then stops it with ``SIGTERM`` (Huey's
immediate stop). Reuse is read from the server session ids the tasks report; clean exits
from the server's abandoned-session counter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness.queues import HueyWorker, worker_starter
from tests.harness.scripts import ROOT
from tests.harness.sessions import abandoned_after, settled_abandoned

Start = Callable[..., HueyWorker]


@pytest.fixture
def huey_worker(driver: str) -> Iterator[Start]:
    """Start consumers with ``huey_worker(mode=..., kind=..., ...)``; each is stopped at the end."""
    yield from worker_starter(HueyWorker, driver)


def _queries(worker: HueyWorker, count: int) -> list[tuple[int, int, int]]:
    """Send ``count`` queries at once (every worker gets some); their (pid, thread, session)."""
    handles = [worker.send("query") for _ in range(count)]
    results = [worker.result(handle) for handle in handles]
    assert all(ok for ok, _ in results), results
    return [value for _, value in results]


def _sessions(seen: list[tuple[int, int, int]]) -> dict[tuple[int, int], set[int]]:
    sessions: dict[tuple[int, int], set[int]] = {}
    for pid, thread, backend in seen:
        sessions.setdefault((pid, thread), set()).add(backend)
    return sessions


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_workers_reuse_a_session_each_and_abandon_none_at_a_sigterm_stop(
    db: None, huey_worker: Start, kind: str
) -> None:
    before = settled_abandoned()
    worker = huey_worker(kind=kind, workers=2)
    seen = _queries(worker, 12)
    output = worker.shutdown()
    sessions = _sessions(seen)
    assert all(len(backends) == 1 for backends in sessions.values()), sessions  # reused
    assert settled_abandoned() == before, output


def test_control_without_forksafe_process_workers_abandon_their_sessions_at_a_sigterm_stop(
    db: None, huey_worker: Start
) -> None:
    """multiprocessing ends each worker process with ``os._exit``: no goodbye."""
    before = settled_abandoned()
    worker = huey_worker(mode="plain", plain=True, kind="process", workers=2)
    _queries(worker, 12)
    output = worker.shutdown()
    assert abandoned_after(before) - before >= 2, output


def _stop_during_a_task(worker: HueyWorker) -> str:
    _queries(worker, 4)
    worker.send("long_query", 2)
    time.sleep(0.8)  # the worker polls every 0.2 s at most: the query is running
    return worker.shutdown()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_sigterm_during_a_task_abandons_no_session(
    db: None, huey_worker: Start, kind: str
) -> None:
    """thread: the consumer's main thread returns at once, its exit waits for the busy thread;
    process: ``SIGTERM`` raises ``KeyboardInterrupt`` in the busy worker, mid-query."""
    before = settled_abandoned()
    output = _stop_during_a_task(huey_worker(kind=kind, workers=2))
    assert settled_abandoned() == before, output


def test_control_without_forksafe_a_sigterm_during_a_task_abandons_the_thread_workers_session(
    db: None, huey_worker: Start
) -> None:
    """Huey's worker threads are daemons: the interpreter's exit freezes the busy one mid-query.

    (Idle threads' connections are freed with their thread states at exit, which closes them.)
    """
    before = settled_abandoned()
    output = _stop_during_a_task(huey_worker(mode="plain", plain=True, kind="thread", workers=2))
    assert abandoned_after(before) > before, output


def test_a_timeout_inside_a_query_or_a_database_error_closes_that_connection(
    db: None, huey_worker: Start
) -> None:
    """The next task on the same worker succeeds, on a new session."""
    before = settled_abandoned()
    worker = huey_worker(kind="process")
    pid, thread, backend = worker.call("query")
    assert "TaskTimeout" in worker.fail("slow_query", 2)
    after = worker.call("query")
    assert after[:2] == (pid, thread)  # the same worker...
    assert after[2] != backend  # ...on a new session: the interrupted one was closed
    assert worker.call("query") == after  # reused
    assert "ProgrammingError" in worker.fail("database_error")
    last = worker.call("query")
    assert last[:2] == (pid, thread) and last[2] != after[2]  # closed after the database error
    output = worker.shutdown()
    assert settled_abandoned() == before, output


def test_control_without_forksafe_the_task_after_a_timeout_mid_query_fails(
    db: None, huey_worker: Start
) -> None:
    """``SIGALRM`` raised ``TaskTimeout`` between sending the query and reading its result."""
    worker = huey_worker(mode="plain", plain=True, kind="process")
    worker.call("query")
    assert "TaskTimeout" in worker.fail("slow_query", 2)
    error = worker.fail("query")
    # psycopg: "another command is already in progress"; mysqlclient: "Commands out of sync".
    assert "already in progress" in error or "out of sync" in error, error


@pytest.mark.parametrize("installed", [True, False], ids=["forksafe", "control-plain-huey"])
def test_a_periodic_task_failing_with_a_database_error_gets_its_connection_closed(
    db: None, driver: str, installed: bool
) -> None:
    """The hooks belong to the Huey instance: periodic tasks get them as ``@task`` ones do."""
    import threading

    from huey import MemoryHuey, crontab

    import forksafe.huey
    from tests.harness.queues import require_heavy_driver
    from tests.queues import jobs

    require_heavy_driver(driver)
    huey = MemoryHuey(f"forksafe-periodic-{installed}")
    if installed:
        forksafe.huey.install(huey)
    periodic = huey.periodic_task(crontab(minute="*"))(jobs.database_error)
    seen: list[bool] = []

    def consumer_thread() -> None:
        from django.db import connection

        connection.ensure_connection()
        huey.execute(periodic.s())
        seen.append(connection.connection is None)
        connection.close()

    thread = threading.Thread(target=consumer_thread)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert seen == [installed]  # closed with forksafe; plain Huey keeps it


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_install_takes_a_huey_instance_and_a_finite_exit_timeout() -> None:
    from huey import MemoryHuey

    import forksafe.huey

    with pytest.raises(TypeError, match="takes a huey.Huey instance, not 'proj'"):
        forksafe.huey.install("proj")
    for bad in (-1, float("inf"), "10"):
        with pytest.raises(ValueError, match="exit_timeout must be a finite number of seconds"):
            forksafe.huey.install(MemoryHuey("forksafe-bad"), exit_timeout=bad)  # type: ignore[arg-type]


@pytest.mark.nodb
def test_install_twice_on_one_huey_registers_its_hooks_once() -> None:
    from huey import MemoryHuey

    import forksafe.huey

    huey = MemoryHuey("forksafe-twice")
    forksafe.huey.install(huey)
    forksafe.huey.install(huey, exit_timeout=1)
    for hooks in (huey._pre_execute, huey._post_execute, huey._startup, huey._shutdown):
        assert list(hooks) == ["forksafe"]


@pytest.mark.nodb
def test_missing_huey_is_an_import_error_naming_the_extra() -> None:
    code = (
        "import json, sys\nsys.modules['huey'] = None\n"
        "try:\n    import forksafe.huey\nexcept ImportError as exc:\n"
        "    print(json.dumps(str(exc)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'forksafe[huey]'" in json.loads(proc.stdout)
