"""forksafe.dramatiq against real ``dramatiq`` workers (processes x threads), PostgreSQL, MariaDB.

Each test starts a worker on a queue of its own (``tests.queues.dramatiq_app``), sends it
messages through Redis and reads their results there, then stops it with a signal. Reuse is
read from the server session ids the actors report; clean exits from the server's
abandoned-session counter.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dramatiq.middleware import Middleware

from tests.harness.queues import DramatiqWorker, worker_starter
from tests.harness.sessions import abandoned_after, settled_abandoned

Start = Callable[..., DramatiqWorker]


@pytest.fixture
def dramatiq_worker(driver: str) -> Iterator[Start]:
    """Start workers with ``dramatiq_worker(mode=..., ...)``; each is stopped at the end."""
    yield from worker_starter(DramatiqWorker, driver)


def _queries(worker: DramatiqWorker, count: int) -> list[tuple[int, int, int]]:
    """Send ``count`` queries at once (every thread gets some); their (pid, thread, session)."""
    messages = [worker.send("query") for _ in range(count)]
    results = [worker.result(message) for message in messages]
    assert all(ok for ok, _ in results), results
    return [value for _, value in results]


def _running_query(worker: DramatiqWorker, actor: str, seconds: int) -> Any:
    """Send a message whose query runs for ``seconds``; return once it has started."""
    message = worker.send(actor, seconds)
    time.sleep(1.5)  # the worker polls Redis at once; the query is running by then
    assert worker.running, worker.shutdown()
    return message


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_worker_threads_reuse_a_session_each_and_abandon_none_when_the_worker_stops(
    db: None, dramatiq_worker: Start, driver: str, sig: int
) -> None:
    before = settled_abandoned()
    worker = dramatiq_worker(processes=2, threads=2)
    seen = _queries(worker, 16)
    if driver == "psycopg":  # a native pool (min_size 2) built in a worker thread
        worker.call("query", "pooled")
    output = worker.shutdown(sig=sig)
    sessions: dict[tuple[int, int], set[int]] = {}
    for pid, thread, backend in seen:
        sessions.setdefault((pid, thread), set()).add(backend)
    assert all(len(backends) == 1 for backends in sessions.values()), sessions  # reused
    assert settled_abandoned() == before, output


def test_a_sigterm_during_a_query_interrupts_it_and_abandons_no_session(
    db: None, dramatiq_worker: Start
) -> None:
    """``notify_shutdown``: Dramatiq raises ``Shutdown`` inside the worker thread mid-query."""
    before = settled_abandoned()
    worker = dramatiq_worker(threads=2)
    worker.call("query")
    _running_query(worker, "shutdown_query", 5)
    output = worker.shutdown(sig=signal.SIGTERM)
    assert "Shutdown" in output, output
    assert settled_abandoned() == before, output


def test_time_limit_inside_a_query_or_a_database_error_closes_that_connection(
    db: None, dramatiq_worker: Start
) -> None:
    """The next message on the same worker thread succeeds, on a new session."""
    before = settled_abandoned()
    worker = dramatiq_worker()
    pid, thread, backend = worker.call("query")
    assert worker.fail("slow_query", 4) == "TimeLimitExceeded"
    after = worker.call("query")
    assert after[:2] == (pid, thread)  # the same worker thread...
    assert after[2] != backend  # ...on a new session: the interrupted one was closed
    assert worker.call("query") == after  # reused
    assert worker.fail("database_error") == "ProgrammingError"
    last = worker.call("query")
    assert last[:2] == (pid, thread) and last[2] != after[2]  # closed after the database error
    output = worker.shutdown()
    assert settled_abandoned() == before, output


def test_control_without_forksafe_a_sigterm_stop_abandons_the_native_pool(
    db: None, dramatiq_worker: Start, driver: str
) -> None:
    """django_dramatiq's middleware closes each thread's connections, never a native pool."""
    if driver != "psycopg":
        pytest.skip("Django's native pools are PostgreSQL's (psycopg 3)")
    before = settled_abandoned()
    worker = dramatiq_worker(mode="django", plain=True, threads=2)
    _queries(worker, 4)
    worker.call("query", "pooled")
    output = worker.shutdown(sig=signal.SIGTERM)
    # min_size 2, plus the one the message returned: measured 3 (docs: task-queues).
    assert abandoned_after(before) - before >= 2, output


def test_control_without_forksafe_the_message_after_a_time_limit_mid_query(
    db: None, dramatiq_worker: Start, driver: str
) -> None:
    """mysqlclient: ``Commands out of sync``; psycopg's C wait defers the exception to the end.

    ``PyThreadState_SetAsyncExc`` fires at the next bytecode: mysqlclient runs it between
    sending the query and reading its result, psycopg (binary) after the result is read.
    """
    worker = dramatiq_worker(mode="django", plain=True)
    pid, thread, backend = worker.call("query")
    assert worker.fail("slow_query", 4) == "TimeLimitExceeded"
    if driver == "mysqlclient":
        assert worker.fail("query") == "ProgrammingError"
    else:
        assert worker.call("query") == (pid, thread, backend)


# --- bad input -----------------------------------------------------------------------------


class _Rival(Middleware):
    """Stands in for django_dramatiq's middleware (not installed with the tests)."""


_Rival.__module__ = "django_dramatiq.middleware"
_Rival.__qualname__ = "DbConnectionsMiddleware"


@pytest.mark.nodb
@pytest.mark.parametrize("other", ["twice", "rival"])
def test_a_worker_refuses_to_start_with_a_second_closing_middleware(other: str) -> None:
    from dramatiq import Worker
    from dramatiq.brokers.stub import StubBroker

    from forksafe.dramatiq import ConfigurationError, ConnectionsMiddleware

    broker = StubBroker(middleware=[ConnectionsMiddleware()])
    if other == "twice":
        broker.add_middleware(ConnectionsMiddleware())
        expected = "is added to the broker 2 times; add it once"
    else:
        broker.add_middleware(_Rival())
        expected = "replaces django_dramatiq.middleware.DbConnectionsMiddleware: remove that one"
    worker = Worker(broker, worker_threads=1)
    with pytest.raises(ConfigurationError, match=expected) as info:
        worker.start()
    assert "\n" not in str(info.value)
    assert not worker.workers  # no thread started
    broker.close()
