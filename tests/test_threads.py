"""forksafe.Thread / ThreadPoolExecutor / closing_connections / install(threads=True).

Real threads against the real servers: the server is asked how many sessions are open
(``pg_stat_activity``, ``information_schema.PROCESSLIST``) and which session answered.
The cyclic garbage collector is switched off while threads run (``no_gc``): Django's
wrappers sit in reference cycles, so without it nothing but forksafe can close a finished
thread's connection -- which is exactly what these tests must show. SQLite has no server
sessions; there the tests check the thread's own wrapper instead.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

import forksafe
from forksafe._sessions import backend_id, count_sessions, quiet_sessions, settle_sessions
from forksafe.demo import _scenarios
from tests.harness.scripts import run_python
from tests.harness.sessions import abandoned_before, assert_none_abandoned
from tests.testapp.models import Item

N_THREADS = 20


def URL() -> str:  # noqa: N802 - reads like the constant it is
    from django.conf import settings

    url: str = settings.FORKSAFE_TEST_URL
    return url


def sessions(vendor: str) -> int | None:
    # A stable reading: sessions of an earlier test may still be ending.
    return None if vendor == "sqlite" else quiet_sessions()


def server_sessions() -> int:
    n = count_sessions()
    assert n is not None, "a server database"
    return n


def open_connections() -> dict[str, int]:
    """``forksafe.stats()``'s ``open`` count of the aliases the thread bodies use."""
    stats = forksafe.stats()
    return {alias: stats.get(alias, {"open": 0})["open"] for alias in ("default", "other")}


def query_and_keep_wrapper(found: list[BaseDatabaseWrapper]) -> None:
    """A thread body: one query on each alias; remember the wrappers to inspect them later."""
    backend_id("default")
    backend_id("other")
    found.extend([connections["default"], connections["other"]])


def run_threads(thread_class: type[threading.Thread], n: int) -> list[BaseDatabaseWrapper]:
    found: list[BaseDatabaseWrapper] = []
    threads = [thread_class(target=query_and_keep_wrapper, args=(found,)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return found


# --- Thread ----------------------------------------------------------------------------------


def test_control_plain_threads_leave_their_sessions_open(vendor: str, no_gc: None) -> None:
    """Without forksafe, finished threads keep their connections until the GC runs."""
    before = sessions(vendor)
    open_before = open_connections()
    found = run_threads(threading.Thread, N_THREADS)
    assert all(w.connection is not None for w in found)
    assert open_connections() == {a: n + N_THREADS for a, n in open_before.items()}
    if before is not None:
        assert sessions(vendor) == before + 2 * N_THREADS
    del found
    gc.collect()
    if before is not None:
        assert settle_sessions(before) == before


def test_threads_close_every_alias_when_they_end_without_gc(vendor: str, no_gc: None) -> None:
    before = sessions(vendor)
    abandoned = abandoned_before(vendor)
    open_before = open_connections()
    found = run_threads(forksafe.Thread, N_THREADS)
    assert len(found) == 2 * N_THREADS
    assert all(w.connection is None for w in found)
    assert open_connections() == open_before  # forksafe's own count agrees
    if before is not None:
        assert settle_sessions(before) == before
    assert_none_abandoned(abandoned)  # closed, each with a goodbye


def test_thread_whose_run_raises_still_closes_its_connections(
    vendor: str, no_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[BaseException | None, bool]] = []
    found: list[BaseDatabaseWrapper] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        # The hook runs after the clean-up, in the failing thread.
        seen.append((args.exc_value, found[0].connection is None))

    monkeypatch.setattr(threading, "excepthook", hook)

    class Failing(forksafe.Thread):
        def run(self) -> None:
            backend_id()
            found.append(connections["default"])
            raise ValueError("the task fails on purpose")

    before = sessions(vendor)
    thread = Failing()
    thread.start()
    thread.join()
    assert len(seen) == 1
    assert isinstance(seen[0][0], ValueError)
    assert seen[0][1] is True, "closed before the exception reached threading.excepthook"
    if before is not None:
        assert settle_sessions(before) == before


def test_thread_left_inside_atomic_is_rolled_back_and_closed(db: None, no_gc: None) -> None:
    found: list[BaseDatabaseWrapper] = []

    def leave_atomic_open() -> None:
        transaction.atomic().__enter__()
        Item.objects.create(name="never committed")
        found.append(connections["default"])

    thread = forksafe.Thread(target=leave_atomic_open)
    thread.start()
    thread.join()
    wrapper = found[0]
    assert wrapper.connection is None
    assert not wrapper.in_atomic_block
    assert not Item.objects.filter(name="never committed").exists()


def test_thread_never_closes_a_connection_another_thread_shares_with_it(vendor: str) -> None:
    """Like Django's LiveServerThread: the owner shares its wrapper with a worker thread."""
    mine = connections["default"]
    my_backend = backend_id()
    mine.inc_thread_sharing()
    used: list[int] = []

    def use_shared() -> None:
        connections["default"] = mine
        used.append(backend_id())

    try:
        thread = forksafe.Thread(target=use_shared)
        thread.start()
        thread.join()
    finally:
        mine.dec_thread_sharing()
    assert used == [my_backend]
    assert mine.connection is not None
    assert backend_id() == my_backend


def test_calling_run_directly_does_not_close_the_callers_connection() -> None:
    my_backend = backend_id()
    thread = forksafe.Thread(target=backend_id)
    thread.run()
    assert connection.connection is not None
    assert backend_id() == my_backend


def test_thread_can_only_be_started_once_like_the_stdlib() -> None:
    thread = forksafe.Thread(target=backend_id)
    thread.start()
    thread.join()
    with pytest.raises(RuntimeError, match="threads can only be started once"):
        thread.start()


# --- ThreadPoolExecutor ------------------------------------------------------------------------


def worker_view(_: object = None) -> tuple[int, int]:
    return threading.get_ident(), backend_id()


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
def test_executor_workers_reuse_connections_and_close_them_at_shutdown(
    vendor: str, no_gc: None, conn_max_age: None
) -> None:
    before = sessions(vendor)
    executor = forksafe.ThreadPoolExecutor(max_workers=4)
    future = executor.submit(worker_view)
    assert isinstance(future, Future)
    results = [future.result(), *executor.map(worker_view, range(60))]
    by_thread: dict[int, set[int]] = {}
    for ident, backend in results:
        by_thread.setdefault(ident, set()).add(backend)
    assert 1 <= len(by_thread) <= 4
    assert all(len(backends) == 1 for backends in by_thread.values()), by_thread
    if before is not None:
        assert sessions(vendor) == before + len(by_thread) <= before + 4
    wrappers = list(executor.map(lambda _: connections["default"], range(8)))
    executor.shutdown(wait=True)
    # join() returned after each worker closed its connection, in the worker.
    assert all(w.connection is None for w in wrappers)
    if before is not None:
        assert settle_sessions(before) == before


def block_until(event: threading.Event) -> int:
    backend_id()
    event.wait(30)
    return backend_id()


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
@pytest.mark.parametrize("how", ["no_wait", "cancel_futures", "garbage_collected"])
def test_executor_workers_close_their_sessions_however_it_ends(
    vendor: str, no_gc: None, conn_max_age: None, how: str
) -> None:
    if vendor == "sqlite":
        pytest.skip("counts server sessions")
    before = server_sessions()
    release = threading.Event()
    executor = forksafe.ThreadPoolExecutor(max_workers=2)
    running = [executor.submit(block_until, release) for _ in range(2)]
    queued = [executor.submit(block_until, release) for _ in range(3)]
    deadline = time.monotonic() + 10
    while server_sessions() != before + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    if how == "no_wait":
        executor.shutdown(wait=False)
    elif how == "cancel_futures":
        executor.shutdown(wait=False, cancel_futures=True)
    else:
        del executor
        gc.collect()
    release.set()
    assert all(f.result(30) for f in running)
    if how == "cancel_futures":
        assert all(f.cancelled() for f in queued)
    else:
        assert all(f.result(30) for f in queued)
    assert settle_sessions(before, timeout=10) == before


def test_executor_closes_its_sessions_at_interpreter_exit(vendor: str) -> None:
    """A script that never shuts its executor down: its idle workers close at exit.

    Python joins the executor's workers before it runs ``atexit`` handlers; the
    handler counts the sessions from the main thread while the process still lives.
    """
    if vendor == "sqlite":
        pytest.skip("counts server sessions")
    script = (
        "import atexit, django, forksafe, gc\n"
        "gc.disable()\n"
        "django.setup()\n"
        "from django.conf import settings\n"
        "from django.db import connections\n"
        "from forksafe._sessions import backend_id, count_sessions, settle_sessions\n"
        "connections.settings['default']['CONN_MAX_AGE'] = None\n"
        "before = count_sessions()\n"
        "ex = forksafe.ThreadPoolExecutor(4)\n"
        "used = len({f.result() for f in [ex.submit(backend_id) for _ in range(8)]})\n"
        "during = count_sessions()\n"
        # The workers' goodbyes reach the server a moment after they are sent.
        "atexit.register(lambda: print(before, used, during,"
        " settle_sessions(before)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == 0, proc.stderr
    before, used, during, at_exit = map(int, proc.stdout.split())
    assert during == before + used >= before + 1
    assert at_exit == before, proc.stdout
    assert "Exception ignored" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("conn_max_age", [0], indirect=True)
def test_executor_closes_in_the_worker_before_the_future_completes_never_in_the_caller(
    vendor: str, conn_max_age: None
) -> None:
    """``CONN_MAX_AGE=0``: the worker closes its connection after the task, in the worker,
    before the result is set -- nothing runs in the caller's thread, so a done callback on a
    finished future (which runs in the caller) leaves the caller's connection alone.
    Without forksafe the worker's connection stays open; see the control below for the
    done-callback way of closing it."""
    my_backend = backend_id()

    def task() -> BaseDatabaseWrapper:
        backend_id()
        return connections["default"]

    with forksafe.ThreadPoolExecutor(max_workers=2) as executor:
        future = executor.submit(task)
        worker_wrapper = future.result()
        assert worker_wrapper is not connection
        assert worker_wrapper.connection is None  # closed before the result was set
        called: list[bool] = []
        future.add_done_callback(lambda f: called.append(True))  # runs here, right now
        assert called == [True]
    assert connection.connection is not None
    assert backend_id() == my_backend


def close_all_callback(future: Future[Any]) -> None:
    connections.close_all()


class CopiedDbSafeThreadPoolExecutor(concurrent.futures.ThreadPoolExecutor):
    """The widely copied helper: it closes connections in a done callback."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(fn, *args, **kwargs)
        # Runs in the submitting thread when the task already finished.
        future.add_done_callback(close_all_callback)
        return future


def test_control_done_callback_clean_up_closes_the_callers_connection_when_the_task_won(
    vendor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copied helper's clean-up is a done callback; when the task finishes before
    ``add_done_callback`` runs (a fast task), the callback runs in the caller's thread and
    closes the caller's connection. The race is taken out: the helper's own submit() on an
    executor whose task is already done (the standard submit() returns a finished Future)."""
    if vendor == "sqlite":
        pytest.skip("needs a server session to compare")
    my_backend = backend_id()
    finished: Future[int] = Future()
    finished.set_result(0)
    with CopiedDbSafeThreadPoolExecutor(max_workers=1) as executor:
        # What super().submit() returns when the worker was faster than the caller.
        monkeypatch.setattr(
            concurrent.futures.ThreadPoolExecutor, "submit", lambda *args, **kw: finished
        )
        assert executor.submit(int) is finished
        monkeypatch.undo()
    assert connection.connection is None
    assert backend_id() != my_backend


def leave_atomic_open(name: str) -> None:
    transaction.atomic().__enter__()
    Item.objects.create(name=name)


def fail_with_autocommit_off(_: object = None) -> None:
    transaction.set_autocommit(False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table_forksafe")


def next_task_state(_: object = None) -> tuple[bool, bool, int, list[str]]:
    Item.objects.create(name="next task")
    return (
        connection.in_atomic_block,
        connection.get_autocommit(),
        Item.objects.count(),
        sorted(Item.objects.values_list("name", flat=True)),
    )


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
def test_task_left_inside_atomic_does_not_poison_the_next_task(
    db: None, conn_max_age: None
) -> None:
    with forksafe.ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(leave_atomic_open, "never committed").result()
        in_atomic, autocommit, _, names = executor.submit(next_task_state).result()
    assert (in_atomic, autocommit) == (False, True)
    assert names == ["next task"]
    assert list(Item.objects.values_list("name", flat=True)) == ["next task"]


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
def test_control_plain_executor_runs_the_next_task_in_the_leaked_transaction(
    db: None, conn_max_age: None
) -> None:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        executor.submit(leave_atomic_open, "never committed").result()
        in_atomic, _, _, names = executor.submit(next_task_state).result()
        assert in_atomic is True
        assert names == ["never committed", "next task"]
    finally:
        executor.submit(connections.close_all).result()  # rolls the leak back
        executor.shutdown()
    assert not Item.objects.exists()


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
def test_task_that_breaks_its_transaction_and_raises_does_not_break_the_next_task(
    db: None, conn_max_age: None
) -> None:
    with forksafe.ThreadPoolExecutor(max_workers=1) as executor:
        with pytest.raises(DatabaseError):
            executor.submit(fail_with_autocommit_off).result()
        in_atomic, autocommit, count, _ = executor.submit(next_task_state).result()
    assert (in_atomic, autocommit, count) == (False, True, 1)


def age_out(_: object = None) -> None:
    """A task: make this worker's connection as old as ``CONN_MAX_AGE`` allows, deterministically
    (Django closes it once ``time.monotonic()`` reaches ``close_at``)."""
    conn = connections["default"]
    if conn.close_at is not None:
        conn.close_at = time.monotonic()


@pytest.mark.parametrize(
    ("conn_max_age", "same_session_now", "same_session_later"),
    [(0, False, False), (None, True, True), (60, True, False)],
    indirect=["conn_max_age"],
)
def test_conn_max_age_applies_between_tasks_as_between_requests(
    vendor: str, conn_max_age: None, same_session_now: bool, same_session_later: bool
) -> None:
    """``0``: close after each task; ``None``: keep; seconds: keep until that age (reached
    here by moving Django's ``close_at`` to now instead of sleeping: no timing)."""
    if vendor == "sqlite":
        pytest.skip("SQLite handles are not server sessions")
    with forksafe.ThreadPoolExecutor(max_workers=1) as executor:
        first = executor.submit(worker_view).result()[1]
        now = executor.submit(worker_view).result()[1]
        executor.submit(age_out).result()
        later = executor.submit(worker_view).result()[1]
    assert (first == now) is same_session_now
    assert (now == later) is same_session_later


def test_initializer_runs_in_each_worker_and_its_connection_is_closed(
    vendor: str, no_gc: None
) -> None:
    found: list[BaseDatabaseWrapper] = []
    names: list[str] = []

    def init(prefix: str) -> None:
        names.append(threading.current_thread().name)
        backend_id()  # a connection opened outside any task
        found.append(connections["default"])

    executor = forksafe.ThreadPoolExecutor(
        max_workers=2, thread_name_prefix="fs-worker", initializer=init, initargs=("x",)
    )
    executor.submit(time.sleep, 0.2)
    executor.submit(time.sleep, 0.2)
    executor.shutdown(wait=True)
    assert names and all(n.startswith("fs-worker") for n in names)
    assert found and all(w.connection is None for w in found)


def test_failing_initializer_breaks_the_pool_like_the_stdlib() -> None:
    def init() -> None:
        raise ValueError("init fails on purpose")

    for cls in (concurrent.futures.ThreadPoolExecutor, forksafe.ThreadPoolExecutor):
        with cls(max_workers=1, initializer=init) as executor:
            future = executor.submit(int)
            with pytest.raises(concurrent.futures.thread.BrokenThreadPool):
                future.result(10)


# --- closing_connections --------------------------------------------------------------------


def test_closing_connections_as_decorator_and_context_manager(vendor: str, no_gc: None) -> None:
    found: list[BaseDatabaseWrapper] = []

    @forksafe.closing_connections
    def bare() -> None:
        query_and_keep_wrapper(found)

    @forksafe.closing_connections()
    def called() -> None:
        query_and_keep_wrapper(found)

    def with_block() -> None:
        with forksafe.closing_connections():
            query_and_keep_wrapper(found)

    def failing() -> None:
        with forksafe.closing_connections():
            query_and_keep_wrapper(found)
            raise KeyError("propagates")

    before = sessions(vendor)
    for target in (bare, called, with_block):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    # In the calling thread too, and an exception propagates.
    with pytest.raises(KeyError):
        failing()
    assert len(found) == 8
    assert all(w.connection is None for w in found)
    if before is not None:
        assert settle_sessions(before) == before


def test_closing_connections_leaves_an_enclosing_atomic_block_alone(db: None) -> None:
    with transaction.atomic():
        Item.objects.create(name="kept")
        with (
            pytest.warns(forksafe.ForkSafeWarning, match="inside transaction.atomic"),
            forksafe.closing_connections(),
        ):
            pass
        Item.objects.create(name="also kept")
    assert Item.objects.count() == 2


def test_closing_connections_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="takes a function to decorate"):
        forksafe.closing_connections(42)  # type: ignore[call-overload]

    async def coro() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine function"):
        forksafe.closing_connections(coro)


# --- install(threads=True) -------------------------------------------------------------------


def test_install_threads_closes_plain_threads_connections(
    vendor: str, no_gc: None, threads_installed: None
) -> None:
    before = sessions(vendor)
    found = run_threads(threading.Thread, N_THREADS)
    assert all(w.connection is None for w in found)
    if before is not None:
        assert settle_sessions(before) == before


def test_install_threads_closes_raw_thread_connections(
    vendor: str, no_gc: None, threads_installed: None
) -> None:
    found: list[BaseDatabaseWrapper] = []
    done = threading.Event()

    def body() -> None:
        try:
            query_and_keep_wrapper(found)
        finally:
            done.set()

    before = sessions(vendor)
    _thread.start_new_thread(body, ())
    assert done.wait(10)
    deadline = time.monotonic() + 5
    while any(w.connection is not None for w in found) and time.monotonic() < deadline:
        time.sleep(0.01)  # nothing to join: the thread finishes a moment after body()
    assert len(found) == 2
    assert all(w.connection is None for w in found)
    if before is not None:
        assert settle_sessions(before) == before


def test_install_threads_can_be_switched_off(vendor: str, no_gc: None) -> None:
    forksafe.install(threads=True)
    forksafe.install(threads=False)
    found = run_threads(threading.Thread, 2)
    assert all(w.connection is not None for w in found)
    connections.close_all()
    del found


def test_install_threads_is_off_by_default() -> None:
    """A fresh interpreter: ``install()`` without ``threads`` leaves a plain thread's
    connection open when the thread ends (the control for install(threads=True))."""
    script = (
        "import gc, json, threading, django, forksafe\n"
        "gc.disable()\n"
        "forksafe.install()\n"
        "django.setup()\n"
        "from django.db import connections\n"
        "found = []\n"
        "def body():\n"
        "    connections['default'].ensure_connection()\n"
        "    found.append(connections['default'])\n"
        "t = threading.Thread(target=body); t.start(); t.join()\n"
        "print(json.dumps(found[0].connection is not None))\n"
        "del found; gc.collect()\n"
    )
    assert run_python("-c", script) is True


def test_install_threads_does_not_close_the_main_threads_connection(
    threads_installed: None,
) -> None:
    my_backend = backend_id()
    run_threads(threading.Thread, 2)
    assert backend_id() == my_backend


# --- bad input, no Django --------------------------------------------------------------------


def error_of(call: Callable[[], object]) -> tuple[type[BaseException], str]:
    try:
        call()
    except Exception as exc:
        return type(exc), str(exc)
    raise AssertionError("no error raised")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.Thread(targt=print),
        lambda m: type("NoInit", (m.Thread,), {"__init__": lambda self: None})().start(),
        lambda m: m.Thread(None, print, "name", [], {}, False, "extra"),
        lambda m: m.ThreadPoolExecutor(max_workers=0),
        lambda m: m.ThreadPoolExecutor(max_workers=-1, initializer=3),
        lambda m: m.ThreadPoolExecutor(initializer=3),
        lambda m: m.ThreadPoolExecutor(max_workrs=2),
        lambda m: m.ThreadPoolExecutor(1).submit(),
        lambda m: m.ThreadPoolExecutor(1).map(),
        lambda m: (e := m.ThreadPoolExecutor(1), e.shutdown(), e.submit(print)),
    ],
)
def test_wrong_arguments_fail_exactly_like_the_stdlib(call: Callable[[Any], object]) -> None:
    stdlib = type(
        "stdlib",
        (),
        {"Thread": threading.Thread, "ThreadPoolExecutor": concurrent.futures.ThreadPoolExecutor},
    )
    assert error_of(lambda: call(forksafe)) == error_of(lambda: call(stdlib))


def test_install_rejects_a_non_bool_threads_option() -> None:
    with pytest.raises(TypeError, match=r"install\(threads=...\) takes True or False, not 'yes'"):
        forksafe.install(threads="yes")  # type: ignore[arg-type]


def test_classes_work_before_django_is_configured() -> None:
    script = (
        "import sys, threading, forksafe\n"
        "assert 'django.conf' not in sys.modules\n"
        "out = []\n"
        "t = forksafe.Thread(target=out.append, args=(1,)); t.start(); t.join()\n"
        "with forksafe.ThreadPoolExecutor(2) as ex:\n"
        "    out.append(ex.submit(sum, [1, 1]).result())\n"
        "    out.extend(ex.map(abs, [-3]))\n"
        "with forksafe.closing_connections():\n"
        "    out.append(4)\n"
        "from django.conf import settings\n"
        "assert not settings.configured\n"
        "print(out)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 2, 3, 4]"
    assert proc.stderr == ""


# --- the demo's thread scenarios ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["threads", "threads_any", "executor"])
def test_demo_thread_scenarios_leave_no_sessions(db_url: str, scenario: str) -> None:
    res = _scenarios.run(scenario, db_url, mode="forksafe")
    assert res["parent_error"] is None, res["stderr"]
    assert res["parent_same_session"] is True
    assert res["sessions_left"] == 0, res  # SQLite: handles on the database file


def test_control_demo_plain_threads_leave_sessions(db_url: str) -> None:
    res = _scenarios.run("threads", db_url, mode="plain")
    assert res["parent_same_session"] is True
    assert res["sessions_left"] > 0, res


def test_a_guard_inherited_through_a_fork_is_not_the_childs_on_the_per_task_path() -> None:
    # The fork generation is bumped by forksafe's one after_in_child hook (_fork), which
    # _thread_guard reads without importing it: a worker thread that forks must not take
    # the parent's guard (and its connections) for its own between two tasks.
    from forksafe import _thread_guard
    from tests.harness.forking import run_in_child

    def in_thread() -> tuple[bool, bool, bool]:
        guard = _thread_guard.current_guard(create=True)
        assert guard is not None
        mine = _thread_guard.current_guard_fast() is guard

        def child() -> tuple[bool, bool]:
            return (
                _thread_guard.current_guard_fast() is None,
                _thread_guard.current_guard(create=False) is None,
            )

        child_none, child_slow_none = run_in_child(child)
        return mine, child_none, child_slow_none

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        assert executor.submit(in_thread).result() == (True, True, True)
