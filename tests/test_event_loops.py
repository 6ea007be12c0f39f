"""Event loops outside ASGI: ``asyncio.run()`` with sync ORM code in executor threads.

A worker or management command built on ``asyncio.run()`` runs sync code in the loop's
default executor (``asyncio.to_thread``, ``sync_to_async(thread_sensitive=False)``) or in
asgiref's single thread (plain ``sync_to_async`` outside a request). With the ``forksafe``
app, ``forksafe.asgi.cover_event_loops()`` and ``cover_sync_to_async()`` make those
forksafe executors: Django's rules after every call, connections closed when the threads
end. The controls put the standard executors back. What is asserted comes from the server:
which of the sessions the calls used are still open, and its abandoned-session counter.
Driver-independent: psycopg and mysqlclient only.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures

import pytest
from asgiref.sync import SyncToAsync, sync_to_async

import forksafe.asgi
from forksafe import threads
from forksafe._sessions import backend_id, list_sessions
from tests.harness.queues import HEAVY_DRIVERS
from tests.harness.sessions import settled_abandoned, wait_sessions_gone

CALLS = 8


@pytest.fixture(autouse=True)
def _one_driver_per_server(request: pytest.FixtureRequest, driver: str) -> None:
    if driver not in HEAVY_DRIVERS and "nodb" not in request.keywords:
        pytest.skip(
            f"event loops are driver-independent: run for {' and '.join(HEAVY_DRIVERS)} only"
        )


def _open(backends: set[int]) -> set[int]:
    sessions = list_sessions()
    assert sessions is not None
    return backends & {s.id for s in sessions}


async def _open_now(backends: set[int]) -> set[int]:
    """From a thread of its own: Django refuses queries in the loop's thread."""
    with futures.ThreadPoolExecutor(1) as counter:
        return await asyncio.get_running_loop().run_in_executor(counter, _open, backends)


def _named_backend() -> tuple[str, int]:
    return threading.current_thread().name, backend_id()


def _caller(kind: str) -> Callable[[], Awaitable[tuple[str, int]]]:
    if kind == "to_thread":
        return lambda: asyncio.to_thread(_named_backend)
    return sync_to_async(_named_backend, thread_sensitive=(kind == "sync_to_async"))


KINDS = ["to_thread", "sync_to_async_unsafe", "sync_to_async"]


async def _calls(kind: str, *, stock: bool) -> tuple[set[str], set[int], set[int]]:
    """``CALLS`` calls of ``kind``; the thread names, the sessions, those still open."""
    if stock and kind != "sync_to_async":
        asyncio.get_running_loop().set_default_executor(futures.ThreadPoolExecutor(4))
    call = _caller(kind)
    results = await asyncio.gather(*(call() for _ in range(CALLS)))
    names = {name for name, _ in results}
    backends = {backend for _, backend in results}
    return names, backends, await _open_now(backends)


@pytest.fixture
def stock_sync_to_async() -> Iterator[futures.ThreadPoolExecutor]:
    """asgiref's own single-thread executor for one test; forksafe's back afterwards."""
    stock = futures.ThreadPoolExecutor(1)
    saved = SyncToAsync.single_thread_executor
    SyncToAsync.single_thread_executor = stock
    try:
        yield stock
    finally:
        SyncToAsync.single_thread_executor = saved


@pytest.mark.parametrize("conn_max_age", [0], indirect=True)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("conn_max_age", "no_gc")
def test_under_asyncio_run_executor_threads_apply_djangos_rules_and_leave_nothing_open(
    db: None, kind: str
) -> None:
    """``CONN_MAX_AGE=0``: closed after every call, as after a request; 0 abandoned."""
    before = settled_abandoned()
    names, backends, still_open = asyncio.run(_calls(kind, stock=False))
    prefix = "forksafe-sync-to-async" if kind == "sync_to_async" else "forksafe-asyncio"
    assert all(name.startswith(prefix) for name in names), names
    assert still_open == set(), still_open  # the rules ran in the executor's threads
    wait_sessions_gone(backends)  # nothing left once the loop has ended
    assert settled_abandoned() == before


@pytest.mark.parametrize("conn_max_age", [0], indirect=True)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("conn_max_age", "no_gc")
def test_control_standard_executors_ignore_djangos_rules_and_leave_sessions_open(
    db: None, kind: str, stock_sync_to_async: futures.ThreadPoolExecutor
) -> None:
    """Without forksafe's executors, ``CONN_MAX_AGE=0`` never closes a session of theirs."""
    names, backends, still_open = asyncio.run(_calls(kind, stock=True))
    assert not any(name.startswith("forksafe") for name in names), names
    assert still_open, backends  # the rules never ran there
    # The loop has ended (its executor's threads too): the sessions stay until the GC runs.
    assert _open(backends) == still_open
    stock_sync_to_async.shutdown(wait=True)
    gc.collect()
    wait_sessions_gone(backends)


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
@pytest.mark.usefixtures("conn_max_age", "no_gc")
def test_sync_to_async_thread_reuses_its_session_and_closes_it_when_it_ends(db: None) -> None:
    """``CONN_MAX_AGE=None``: one session across loops; closed with a goodbye at the end."""
    before = settled_abandoned()
    executor = forksafe.asgi.cover_sync_to_async()
    assert executor is SyncToAsync.single_thread_executor
    assert isinstance(executor, threads.ThreadPoolExecutor)
    first = asyncio.run(_calls("sync_to_async", stock=False))
    second = asyncio.run(_calls("sync_to_async", stock=False))
    assert len(first[1]) == 1 and first[1] == second[1] == second[2]  # reused, still open
    executor.shutdown(wait=True)  # as at interpreter exit
    wait_sessions_gone(first[1])
    assert settled_abandoned() == before
    replaced = forksafe.asgi.cover_sync_to_async()  # a shut-down executor is replaced
    assert replaced is not executor and replaced is SyncToAsync.single_thread_executor


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
@pytest.mark.usefixtures("conn_max_age", "no_gc")
def test_install_default_executor_takes_a_loop_that_is_not_running(db: None) -> None:
    before = settled_abandoned()
    loop = asyncio.new_event_loop()
    try:
        executor = forksafe.asgi.install_default_executor(loop=loop)
        assert forksafe.asgi.install_default_executor(loop=loop) is executor
        result = loop.run_until_complete(loop.run_in_executor(None, _named_backend))
        assert result[0].startswith("forksafe-asyncio")
        assert _open({result[1]}) == {result[1]}  # CONN_MAX_AGE=None: kept
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    wait_sessions_gone({result[1]})
    assert settled_abandoned() == before


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_install_default_executor_refuses_what_is_not_an_open_loop() -> None:
    with pytest.raises(TypeError, match="loop must be an asyncio event loop, not 'loop'"):
        forksafe.asgi.install_default_executor(loop="loop")  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="is closed"):
        forksafe.asgi.install_default_executor(loop=loop)
    with pytest.raises(RuntimeError, match="needs the running event loop.*pass the loop"):
        forksafe.asgi.install_default_executor()
