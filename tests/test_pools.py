"""forksafe.Pool / Process / ProcessPoolExecutor / get_context, on real servers and processes.

Every start method and both libraries (``multiprocessing``, ``multiprocess``). The parent
uses the database before the pool exists, workers run ORM queries, and the server is asked
which session answered and how many sessions are left. Task functions live at module level
(importable by spawn/forkserver children); this module imports a model at the top, which a
spawn child can only do because forksafe set Django up before unpickling anything.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from django.db import connection, transaction

import forksafe
from forksafe._sessions import backend_id
from forksafe.demo import _scenarios
from tests.harness.scripts import run_python
from tests.harness.sessions import (
    abandoned_after,
    abandoned_before,
    assert_none_abandoned,
    wait_sessions_gone,
)
from tests.testapp.models import Item

METHODS = ("fork", "spawn", "forkserver")
COMBOS = [(lib, m) for lib in ("multiprocessing", "multiprocess") for m in METHODS]

# --- tasks (run in the workers) -----------------------------------------------------------


def orm_task(i: int) -> tuple[int, int]:
    """Write a row through the ORM; say which process and which session did it."""
    Item.objects.create(name=f"task {i}", pid=os.getpid())
    return os.getpid(), backend_id()


def check_worker_ready() -> None:
    """A pool initializer from this module (it imports a model at the top): Django is ready.

    Under spawn/forkserver this function is unpickled with the worker process object,
    which imports this module: that only works because Django was set up first.
    """
    from django.apps import apps

    assert apps.ready
    assert connection.connection is None  # nothing inherited, nothing opened yet


def in_atomic_state(_: int) -> tuple[bool, int]:
    """A worker's view of its transaction state, then a query that must work."""
    Item.objects.create(name="from a worker", pid=os.getpid())
    return connection.in_atomic_block, Item.objects.count()


def die_by_sigkill(_: int) -> None:
    """Open a session, then die without a word."""
    backend_id()
    os.kill(os.getpid(), signal.SIGKILL)


def exit_abruptly(_: int) -> None:
    backend_id()
    os._exit(3)


def process_target(report: Any) -> None:
    """A ``forksafe.Process`` target: query, then report which session answered."""
    report.put((os.getpid(), backend_id()))


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def keep_parent_connection() -> Iterator[None]:
    """``install(close_before_fork=False)``: the parent's session must survive untouched."""
    forksafe.install(close_before_fork=False)
    yield
    forksafe.install(close_before_fork=True)  # the test-suite's setting


def _before(vendor: str) -> int | None:
    """Open the parent's own session; the server's settled count of abandoned sessions."""
    backend_id()
    return abandoned_before(vendor)


def _assert_closed_cleanly(before: int | None, seen: list[tuple[int, int]], vendor: str) -> None:
    """The workers' sessions are gone, and every one of them said goodbye."""
    if vendor != "sqlite":
        wait_sessions_gone({backend for _, backend in seen})
    assert_none_abandoned(before)


def _assert_own_sessions(seen: list[tuple[int, int]], parent: int, vendor: str) -> None:
    """Every worker process had one session of its own, kept across its tasks."""
    by_pid: dict[int, set[int]] = {}
    for pid, backend in seen:
        by_pid.setdefault(pid, set()).add(backend)
    assert os.getpid() not in by_pid
    if vendor == "sqlite":  # the "backend id" is an address: not comparable across processes
        return
    backends = [b for bs in by_pid.values() for b in bs]
    assert all(len(bs) == 1 for bs in by_pid.values()), by_pid  # kept across tasks
    assert len(backends) == len(set(backends)), by_pid  # no two workers share
    assert parent not in backends, by_pid


def _run_script(code: str, **env: str) -> Any:
    """Run ``code`` in a fresh interpreter (no forksafe.install()); its last line is JSON."""
    return run_python("-c", code, env=env)


# --- the guarantees ------------------------------------------------------------------------


@pytest.mark.parametrize(("library", "method"), COMBOS)
def test_workers_get_own_sessions_and_none_are_left_after_join(
    db: None, db_url: str, vendor: str, library: str, method: str, keep_parent_connection: None
) -> None:
    parent = backend_id()
    before = _before(vendor)
    ctx = forksafe.get_context(method, library=library)
    with ctx.Pool(2, initializer=check_worker_ready) as pool:
        # A timeout, not a hang, if a worker cannot start (it would be replaced forever).
        seen = pool.map_async(orm_task, range(12), chunksize=2).get(timeout=60)
        pool.close()
        pool.join()
    assert backend_id() == parent  # the parent's session still answers
    _assert_own_sessions(seen, parent, vendor)
    assert Item.objects.count() == 12
    _assert_closed_cleanly(before, seen, vendor)


def test_control_plain_fork_pool_shares_or_hangs_on_the_parent_session(
    db_url: str, vendor: str
) -> None:
    """Without forksafe, fork workers inherit the parent's session (a fresh interpreter).

    SQLite: its handle, which the workers then use (SQLite forbids it).
    """
    plain = _scenarios.run("mp_pool", db_url, mode="plain")
    assert plain["child_own_session"] is not True, plain
    assert plain["child_own_session"] is False or "hung" in (plain["child_error"] or ""), plain
    safe = _scenarios.run("mp_pool", db_url, mode="forksafe")
    assert safe["child_error"] is None, safe
    assert safe["child_own_session"] is True, safe
    assert safe["parent_same_session"] is True, safe
    if vendor != "sqlite":  # a child's handles close with it: nothing to count
        assert safe["sessions_left"] == 0, safe


@pytest.mark.parametrize("library", ["multiprocessing", "multiprocess"])
def test_pool_created_inside_atomic_has_clean_workers_and_parent_commits(
    db: None, db_url: str, vendor: str, library: str
) -> None:
    """install() active: the at-fork hook's reset is made clean for pool workers."""
    if vendor == "sqlite":
        pytest.skip("SQLite: workers would wait on the parent's write lock")
    with transaction.atomic():
        Item.objects.create(name="parent", pid=os.getpid())
        with forksafe.get_context("fork", library=library).Pool(2) as pool:
            states = pool.map(in_atomic_state, range(4), chunksize=1)
            pool.close()
            pool.join()
    assert all(in_atomic is False for in_atomic, _ in states), states
    assert Item.objects.filter(name="parent").count() == 1  # the parent committed
    assert Item.objects.filter(name="from a worker").count() == 4


_ATOMIC_SCRIPT = """
import json, os, django
django.setup()
from django.db import connection, transaction
import forksafe
from tests.test_pools import in_atomic_state
from tests.testapp.models import Item
Item.objects.all().delete()
with transaction.atomic():
    Item.objects.create(name="parent", pid=os.getpid())
    pool = forksafe.Pool(2, context=forksafe.get_context("fork", library={library!r}))
    states = pool.map(in_atomic_state, range(4), chunksize=1)
    pool.close(); pool.join()
out = dict(states=states, parent=Item.objects.filter(name="parent").count(),
           workers=Item.objects.filter(name="from a worker").count())
Item.objects.all().delete()
print(json.dumps(out))
"""


@pytest.mark.parametrize("library", ["multiprocessing", "multiprocess"])
def test_pool_inside_atomic_without_install_has_clean_workers(
    db: None, vendor: str, library: str
) -> None:
    """No install(): forksafe.Pool does the pre-fork cleanup and clean reset by itself."""
    if vendor == "sqlite":
        pytest.skip("SQLite: workers would wait on the parent's write lock")
    res = _run_script(_ATOMIC_SCRIPT.format(library=library))
    assert all(in_atomic is False for in_atomic, _ in res["states"]), res
    assert res["parent"] == 1 and res["workers"] == 4, res


@pytest.mark.parametrize(("library", "method"), [("multiprocessing", "fork"), *COMBOS[3:4]])
def test_maxtasksperchild_one_does_not_pile_up_sessions(
    db: None, db_url: str, vendor: str, library: str, method: str, keep_parent_connection: None
) -> None:
    before = _before(vendor)
    ctx = forksafe.get_context(method, library=library)
    with ctx.Pool(2, maxtasksperchild=1) as pool:
        seen = pool.map(orm_task, range(8), chunksize=1)
        # Each worker ran one task and exited, closing its session; the pool lives on.
        if vendor != "sqlite":
            wait_sessions_gone({backend for _, backend in seen})
        pool.close()
        pool.join()
    assert len({pid for pid, _ in seen}) == 8
    _assert_closed_cleanly(before, seen, vendor)


def test_spawn_maxtasksperchild_closes_sessions(
    db: None, db_url: str, vendor: str, keep_parent_connection: None
) -> None:
    before = _before(vendor)
    with forksafe.Pool(2, maxtasksperchild=1, context=forksafe.get_context("spawn")) as pool:
        seen = pool.map(orm_task, range(3), chunksize=1)
        pool.close()
        pool.join()
    assert len({pid for pid, _ in seen}) == 3
    _assert_closed_cleanly(before, seen, vendor)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_exit_closes_its_sessions_instead_of_abandoning_them(
    db: None, db_url: str, vendor: str, method: str, keep_parent_connection: None
) -> None:
    """Workers that exit (close/join, maxtasksperchild) say goodbye; a killed one cannot.

    The server counts sessions whose client vanished: PostgreSQL 14+
    ``pg_stat_database.sessions_abandoned``, MariaDB ``Aborted_clients`` (server-wide; the
    test server is this run's alone). A session closed by its client is not counted.
    """
    if vendor == "sqlite":
        pytest.skip("SQLite has no sessions to abandon")
    before = _before(vendor)
    ctx = forksafe.get_context(method)
    with ctx.Pool(2, maxtasksperchild=2) as pool:
        seen = pool.map_async(orm_task, range(6), chunksize=1).get(timeout=60)
        pool.close()
        pool.join()
    _assert_closed_cleanly(before, seen, vendor)
    # Control: a worker that dies without a word is counted -- the assertion above can fail.
    pool = ctx.Pool(1)
    pool.apply_async(die_by_sigkill, (0,))
    pool.apply(orm_task, (0,))  # served by the replacement worker
    pool.terminate()
    pool.join()
    assert before is not None and abandoned_after(before) > before


def test_terminate_leaves_no_sessions(
    db: None, db_url: str, vendor: str, keep_parent_connection: None
) -> None:
    """terminate() ends the workers with SIGTERM: the server drops their sessions (by id);
    the parent's session is untouched. (Whether a worker said goodbye first depends on a race
    inside multiprocessing's terminate, so the abandoned counter is not asserted here.)"""
    parent = backend_id()
    pool = forksafe.Pool(2, context=forksafe.get_context("fork"))
    seen = pool.map(orm_task, range(4), chunksize=1)
    pool.terminate()
    pool.join()
    assert backend_id() == parent
    if vendor != "sqlite":
        wait_sessions_gone({backend for _, backend in seen})


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_executor_workers_own_sessions_and_shutdown_closes_them(
    db: None, db_url: str, vendor: str, method: str, keep_parent_connection: None
) -> None:
    parent = backend_id()
    before = _before(vendor)
    with forksafe.ProcessPoolExecutor(2, mp_context=forksafe.get_context(method)) as ex:
        seen = list(ex.map(orm_task, range(8)))
    assert backend_id() == parent
    _assert_own_sessions(seen, parent, vendor)
    _assert_closed_cleanly(before, seen, vendor)


def test_executor_max_tasks_per_child_closes_sessions(
    db: None, db_url: str, vendor: str, keep_parent_connection: None
) -> None:
    before = _before(vendor)
    with forksafe.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
        seen = list(ex.map(orm_task, range(3)))
    assert len({pid for pid, _ in seen}) == 3
    _assert_closed_cleanly(before, seen, vendor)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_executor_worker_killed_breaks_the_pool_and_server_drops_its_session(
    db: None, db_url: str, vendor: str, method: str, keep_parent_connection: None
) -> None:
    parent = backend_id()
    before = _before(vendor)
    with forksafe.ProcessPoolExecutor(2, mp_context=forksafe.get_context(method)) as ex:
        future = ex.submit(die_by_sigkill, 0)
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=60)
    assert backend_id() == parent
    if before is not None:  # the killed worker could say nothing: the server counts it
        assert abandoned_after(before) > before


def test_pool_worker_os_exit_keeps_stdlib_behaviour_and_parent(
    db: None, db_url: str, vendor: str, keep_parent_connection: None
) -> None:
    """multiprocessing.Pool replaces a worker that died; its task's result never comes."""
    parent = backend_id()
    before = _before(vendor)
    with forksafe.Pool(1, context=forksafe.get_context("fork")) as pool:
        lost = pool.apply_async(exit_abruptly, (0,))
        with pytest.raises(multiprocessing.TimeoutError):
            lost.get(timeout=2)
        pid, replacement = pool.apply(orm_task, (1,))  # the replacement worker works
        assert pid != os.getpid()
        # The lost task stays pending: close() + join() would wait for it forever
        # (the standard library's behaviour), terminate() is the way out.
        pool.terminate()
        pool.join()
    assert backend_id() == parent
    if before is not None:  # os._exit and terminate(): no goodbye, the server counts them
        wait_sessions_gone({replacement})
        assert abandoned_after(before) > before


@pytest.mark.parametrize("method", METHODS)
def test_process_closes_its_session_when_target_returns(
    db: None, db_url: str, vendor: str, method: str, keep_parent_connection: None
) -> None:
    parent = backend_id()
    before = _before(vendor)
    ctx = forksafe.get_context(method)
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=process_target, args=(queue,))
    proc.start()
    pid, child_backend = queue.get()
    proc.join(60)
    assert proc.exitcode == 0
    assert pid == proc.pid
    if vendor != "sqlite":
        assert child_backend != parent
    assert backend_id() == parent
    _assert_closed_cleanly(before, [(pid, child_backend)], vendor)


def test_default_process_class_is_forksafe(
    db: None, db_url: str, vendor: str, keep_parent_connection: None
) -> None:
    before = _before(vendor)
    queue: multiprocessing.SimpleQueue[tuple[int, int]] = multiprocessing.SimpleQueue()
    proc = forksafe.Process(target=process_target, args=(queue,))
    proc.start()
    seen = [queue.get()]
    proc.join(60)
    assert proc.exitcode == 0
    _assert_closed_cleanly(before, seen, vendor)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocess_runs_lambdas_and_closures(db: None, method: str) -> None:
    offset = 10
    ctx = forksafe.get_context(method, library="multiprocess")
    with ctx.Pool(2) as pool:
        squares = pool.map(lambda x: x * x + offset, range(5))
        counts = pool.map(lambda _: Item.objects.count(), range(2))
    assert squares == [x * x + offset for x in range(5)]
    assert counts == [0, 0]


# --- spawn and settings -----------------------------------------------------------------


_CONFIGURED_SCRIPT = """
import json, os
os.environ.pop("DJANGO_SETTINGS_MODULE", None)
from django.conf import settings
settings.configure(DATABASES={}, INSTALLED_APPS=[])
import django; django.setup()
import forksafe
from django.core.exceptions import ImproperlyConfigured
out = {}
for name, make in [
    ("pool", lambda: forksafe.Pool(1, context=forksafe.get_context("spawn"))),
    ("executor", lambda: forksafe.ProcessPoolExecutor(1, mp_context=forksafe.get_context("spawn"))),
    ("process", lambda: forksafe.get_context("forkserver").Process(target=print).start()),
]:
    try:
        make()
        out[name] = "no error"
    except ImproperlyConfigured as exc:
        out[name] = str(exc)
with forksafe.Pool(1, context=forksafe.get_context("fork")) as pool:
    out["fork"] = pool.apply(os.getpid) != os.getpid()
print(json.dumps(out))
"""


def test_spawn_with_settings_configure_fails_clearly_in_the_parent() -> None:
    res = _run_script(_CONFIGURED_SCRIPT)
    for name in ("pool", "executor", "process"):
        assert "settings.configure()" in res[name], res
        assert "DJANGO_SETTINGS_MODULE" in res[name], res
    assert res["fork"] is True  # fork carries everything: allowed


# --- bad input -----------------------------------------------------------------------------


def test_unknown_library_is_a_value_error_listing_valid_ones() -> None:
    with pytest.raises(ValueError, match="'multiprocessing', 'multiprocess'"):
        forksafe.get_context("fork", library="billiard")
    with pytest.raises(ValueError, match="'multiprocessing', 'multiprocess'"):
        forksafe.get_context(library=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("library", ["multiprocessing", "multiprocess"])
def test_unknown_start_method_is_a_value_error_listing_valid_ones(library: str) -> None:
    with pytest.raises(ValueError, match="'fork', 'spawn', 'forkserver'"):
        forksafe.get_context("threads", library=library)
    with pytest.raises(ValueError, match="start method"):
        forksafe.get_context(3)  # type: ignore[arg-type]


def test_pool_rejects_something_that_is_not_a_context() -> None:
    with pytest.raises(ValueError, match="not a multiprocessing context"):
        forksafe.Pool(1, context="fork")


def test_executor_rejects_a_multiprocess_context() -> None:
    import multiprocess  # type: ignore[import-untyped,unused-ignore]

    with pytest.raises(ValueError, match="library='multiprocess'"):
        forksafe.ProcessPoolExecutor(1, mp_context=multiprocess.get_context("fork"))


_MISSING_SCRIPT = """
import json, sys
sys.modules["multiprocess"] = None
import forksafe
try:
    forksafe.get_context("fork", library="multiprocess")
except ImportError as exc:
    print(json.dumps(str(exc)))
"""


def test_missing_multiprocess_names_the_extra() -> None:
    message = _run_script(_MISSING_SCRIPT)
    assert "pip install 'forksafe[multiprocess]'" in str(message)


@pytest.mark.parametrize(
    "submit",
    [
        lambda ctx, fn: forksafe.Pool(1, context=ctx).map(fn, [1]),
        lambda ctx, fn: ctx.Process(target=fn).start(),
        lambda ctx, fn: forksafe.ProcessPoolExecutor(1, mp_context=ctx).submit(fn, 1).result(60),
    ],
    ids=["pool", "process", "executor"],
)
def test_unpicklable_callable_under_spawn_fails_with_the_stdlib_error(
    submit: Callable[[Any, Callable[[int], int]], object],
) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError), match="local object"):
        submit(forksafe.get_context("spawn"), lambda x: x)


def test_context_keeps_its_library_and_method() -> None:
    ctx = forksafe.get_context("spawn")
    assert ctx.get_start_method() == "spawn"
    assert ctx.get_context() is ctx
    assert forksafe.get_context("spawn") is ctx
    assert ctx.get_context("fork") is forksafe.get_context("fork")
    assert isinstance(ctx.Process(), forksafe.get_context("spawn").Process)


def process_class_module(_: int) -> str:
    """Where the class of the worker process that runs this task comes from."""
    return type(multiprocessing.current_process()).__module__


def test_plain_context_passed_to_pool_and_executor_is_made_forksafe(db: None) -> None:
    fork = multiprocessing.get_context("fork")
    with forksafe.Pool(1, context=fork) as pool:
        assert pool.apply(process_class_module, (0,)) == "forksafe.pools"
    with forksafe.ProcessPoolExecutor(1, mp_context=fork) as ex:
        assert ex.submit(process_class_module, 0).result(60) == "forksafe.pools"
