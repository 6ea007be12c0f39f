"""Plain multiprocessing spawn/forkserver children of third-party code, with forksafe.pools.

``multiprocessing.Pool`` and ``concurrent.futures.ProcessPoolExecutor`` built by code that
is not forksafe's, under ``get_context("spawn")`` and ``("forkserver")`` explicitly (Python
3.14's default on Linux; 3.14 is not installable here). Controls: without forksafe an ORM
query in a child is ``AppRegistryNotReady`` and a child's session is abandoned when it
exits; with :func:`forksafe.pools.initializer` or :func:`forksafe.pools.cover_children`
the query works and the server counts 0 abandoned sessions.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from forksafe import pools
from tests.harness import spawn_models, spawn_tasks
from tests.harness.sessions import abandoned_after, settled_abandoned

METHODS = ["spawn", "forkserver"]
DRIVERS = ("psycopg", "mysqlclient")


@pytest.fixture(autouse=True)
def one_driver_per_server(request: pytest.FixtureRequest, driver: str) -> None:
    """Children cost a fresh interpreter each: one driver per server (CI time)."""
    if "nodb" not in request.keywords and driver not in DRIVERS:
        pytest.skip(f"spawn children run for {' and '.join(DRIVERS)} only (CI time)")


@pytest.fixture
def covered() -> Iterator[None]:
    pools.cover_children()
    try:
        yield
    finally:
        pools.cover_children(False)


def _pool_run(method: str, fn: Any, count: int, **options: Any) -> list[Any]:
    """Run ``fn`` ``count`` times in a plain pool of 2; close and join it (a normal exit)."""
    pool = multiprocessing.get_context(method).Pool(2, **options)
    try:
        results = pool.map(fn, range(count), chunksize=1)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    return results


@pytest.mark.parametrize("method", METHODS)
def test_control_without_forksafe_an_orm_query_in_a_child_is_app_registry_not_ready(
    db: None, method: str
) -> None:
    from django.core.exceptions import AppRegistryNotReady

    with pytest.raises(AppRegistryNotReady):
        _pool_run(method, spawn_tasks.orm_count, 1)


def test_control_without_forksafe_forkserver_children_abandon_their_sessions_when_they_exit(
    db: None,
) -> None:
    """A forkserver child ends with ``os._exit``; a spawn child with ``sys.exit`` (measured:
    its interpreter's finalization frees, and so closes, the connection: no control there)."""
    before = settled_abandoned()
    seen = _pool_run("forkserver", spawn_tasks.session, 4)
    assert abandoned_after(before) - before >= len(set(seen)) >= 1, seen


@pytest.mark.parametrize(("method", "kind"), [("spawn", "pool"), ("forkserver", "executor")])
def test_the_initializer_sets_django_up_and_closes_the_childs_sessions_at_exit(
    db: None, method: str, kind: str
) -> None:
    before = settled_abandoned()
    init = pools.initializer(spawn_tasks.remember)
    ctx = multiprocessing.get_context(method)
    if kind == "pool":
        counts = _pool_run(method, spawn_tasks.orm_count, 4, initializer=init, initargs=("x",))
        inits = _pool_run(method, spawn_tasks.initialized, 1, initializer=init, initargs=("x",))
    else:
        with ProcessPoolExecutor(2, ctx, initializer=init, initargs=("x",)) as executor:
            counts = list(executor.map(spawn_tasks.orm_count, range(4)))
            inits = list(executor.map(spawn_tasks.initialized, range(1)))
    assert counts == [0, 0, 0, 0]
    assert inits == [["x"]]  # the chained initializer ran, with the pool's initargs
    assert settled_abandoned() == before


@pytest.mark.parametrize("method", METHODS)
def test_cover_children_makes_plain_children_set_django_up_and_close_their_sessions(
    db: None, covered: None, method: str
) -> None:
    """No initializer from forksafe: the pool's own initializer imports a model at the top."""
    before = settled_abandoned()
    counts = _pool_run(method, spawn_tasks.orm_count, 4, initializer=spawn_models.check_ready)
    assert counts == [0, 0, 0, 0]
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(1, ctx) as executor:
        assert executor.submit(spawn_tasks.orm_count).result(timeout=60) == 0
    assert settled_abandoned() == before


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_a_chained_initializer_that_is_not_callable_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"chained initializer #2 must be callable, not 'setup'"):
        pools.initializer(spawn_tasks.remember, "setup")  # type: ignore[arg-type]
