"""The fork hooks inside one process: real ``os.fork()`` from the test, children report back.

``forksafe.install()`` ran in ``conftest.py``, before ``django.setup()``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import ProgrammingError, connection, connections, transaction

import forksafe
from forksafe import _drivers, _fork, _registry, _sessions
from tests.harness.forking import ChildFailed, fork_child, run_in_child, wait_child
from tests.harness.scripts import run_python
from tests.harness.sessions import (
    abandoned_after,
    abandoned_before,
    assert_none_abandoned,
    wait_sessions_gone,
)
from tests.testapp.models import Item

pytestmark = pytest.mark.usefixtures("db")


@pytest.fixture
def keep_open() -> Iterator[None]:
    """Fork with the parent's connections left open (close_before_fork=False)."""
    forksafe.install(close_before_fork=False)
    yield
    forksafe.install(close_before_fork=True)


def test_child_orm_queries_get_a_session_of_their_own(keep_open: None, vendor: str) -> None:
    Item.objects.create(name="parent")
    parent_backend = _sessions.backend_id()

    def child() -> tuple[int, int]:
        Item.objects.create(name="child", pid=os.getpid())
        return _sessions.backend_id(), Item.objects.count()

    child_backend, count = run_in_child(child)
    assert count == 2
    assert child_backend != parent_backend
    assert _sessions.backend_id() == parent_backend
    assert Item.objects.filter(name="child").count() == 1


def test_every_alias_is_detached_in_the_child(keep_open: None) -> None:
    parents = {alias: _sessions.backend_id(alias) for alias in ("default", "other")}
    assert all(forksafe.stats()[alias]["open"] >= 1 for alias in parents)

    def child() -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, dict[str, int]]]:
        inherited = forksafe.stats()  # right after the reset: nothing open, all detached
        ids = {alias: _sessions.backend_id(alias) for alias in ("default", "other")}
        return ids, inherited, forksafe.stats()

    children, inherited, after = run_in_child(child)
    for alias in parents:
        assert children[alias] != parents[alias]
        assert _sessions.backend_id(alias) == parents[alias]
        assert inherited[alias]["open"] == 0, inherited
        assert inherited[alias]["detached"] >= 1, inherited
        assert after[alias]["open"] == 1, after  # the child's own, just opened


def test_fork_inside_atomic_keeps_parent_transaction(keep_open: None, vendor: str) -> None:
    def child() -> str:
        # Still "inside" the parent's block: the child must not use its session.
        try:
            Item.objects.count()
        except ProgrammingError as exc:
            return str(exc)
        return "query ran"

    with pytest.warns(forksafe.ForkSafeWarning, match="inside a transaction"):
        forksafe.install(close_before_fork=True)
        with transaction.atomic():
            Item.objects.create(name="in-transaction")
            message = run_in_child(child)
            Item.objects.create(name="after-fork")
    assert message == "Cannot open a new connection in an atomic block."
    assert set(Item.objects.values_list("name", flat=True)) == {"in-transaction", "after-fork"}


def test_child_forked_inside_atomic_can_leave_the_block_and_query(keep_open: None) -> None:
    """Raw fork inside a block: the child's queries in it raise, leaving it is clean,
    the parent's on_commit callbacks run in the parent only, and the parent commits."""
    parent_pid = os.getpid()
    parent_backend = _sessions.backend_id()
    read_fd, write_fd = os.pipe()
    outer = transaction.atomic()
    outer.__enter__()
    try:
        Item.objects.create(name="parent-row")
        transaction.on_commit(lambda: os.write(write_fd, f"commit in {os.getpid()};".encode()))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            report = "start"
            try:
                try:
                    Item.objects.count()
                    report = "query inside the inherited block ran"
                except ProgrammingError:
                    outer.__exit__(None, None, None)  # leaving the block: no commit, no error
                    own = _sessions.backend_id() != parent_backend
                    report = f"ok own={own} rows={Item.objects.filter(name='parent-row').count()}"
            except BaseException as exc:
                report = f"{type(exc).__name__}: {exc}"
            finally:
                os.write(write_fd, f"child: {report};".encode())
                os._exit(0)
        assert wait_child(pid) == 0
    finally:
        outer.__exit__(None, None, None)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 1000):
        data += chunk
    os.close(read_fd)
    # The child saw no uncommitted row (own session) and ran no callback of the parent's.
    assert data.decode().split(";")[:-1] == ["child: ok own=True rows=0", f"commit in {parent_pid}"]
    assert Item.objects.filter(name="parent-row").count() == 1


def test_other_threads_connections_survive_the_fork(keep_open: None) -> None:
    """Four threads hold connections while the main thread forks; all keep their sessions."""
    ready = threading.Barrier(5)
    forked = threading.Event()
    results: dict[int, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            before = _sessions.backend_id()
            ready.wait(10)
            forked.wait(10)
            results[n] = (before, _sessions.backend_id())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    ready.wait(10)

    def child() -> int:
        # The child's GC may collect the other threads' wrappers: nothing must reach the server.
        gc.collect()
        return _sessions.backend_id()

    run_in_child(child)
    forked.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(results) == 4
    assert all(before == after for before, after in results.values())


def test_fork_while_threads_query_200_times_without_errors(keep_open: None, vendor: str) -> None:
    """Stress: 4 threads keep querying while the main thread forks 200 times.

    The forks start once every thread has connected: a fork while another thread is inside
    ``connect()`` can leave OpenSSL's locks held in the child (PyMySQL builds an SSL context
    on connect; measured on Python 3.13, the child then hangs in
    ``ssl.create_default_context()``), a hazard of fork + threads that no library can undo.
    """
    stop = threading.Event()
    connected = threading.Barrier(5)
    errors: list[str] = []
    queries = [0]

    def worker() -> None:
        try:
            _sessions.backend_id()
            connected.wait(30)
            while not stop.is_set():
                _sessions.backend_id()
                queries[0] += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    parent_backend = _sessions.backend_id()
    connected.wait(30)
    child_errors = 0
    try:
        for i in range(200):
            query = i % 10 == 0  # a querying child every 10th fork keeps the run short

            def child(query: bool = query) -> int:
                return 3 if query and _sessions.backend_id() == parent_backend else 0

            if fork_child(child, timeout=30) != 0:
                child_errors += 1
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert child_errors == 0
    assert queries[0] > 0
    assert _sessions.backend_id() == parent_backend


def test_close_before_fork_closes_only_the_forking_threads_idle_connections() -> None:
    """Another thread's connection stays open (and its session answers); calling it again is
    harmless: nothing to close, the next query reconnects."""
    forksafe.install(close_before_fork=True)
    _sessions.backend_id()
    opened, release = threading.Event(), threading.Event()
    seen: list[tuple[int, int]] = []

    def other_thread() -> None:
        try:
            before = _sessions.backend_id()
            opened.set()
            release.wait(30)
            seen.append((before, _sessions.backend_id()))
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert opened.wait(30)
        assert connection.connection is not None
        forksafe.prepare_fork()
        assert connection.connection is None
        forksafe.prepare_fork()  # repeated
        assert connection.connection is None
    finally:
        release.set()
        thread.join(30)
    assert len(seen) == 1 and seen[0][0] == seen[0][1], seen  # the other thread's session
    assert _sessions.backend_id() > 0  # this thread reconnects


def test_a_fork_leaves_the_parent_holding_nothing_of_a_connection_dropped_later(
    keep_open: None, vendor: str
) -> None:
    """What the fork hooks prepare for the child is dropped in the parent after the fork.

    A connection its wrapper drops without closing (a thread's, left to the GC) must be
    freed -- and its session ended -- when the wrapper is collected, fork or no fork.
    """
    if vendor == "sqlite":
        pytest.skip("no socket to prepare for (and sqlite3 connections take no weak reference)")
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    raw = wrapper.connection
    # What the fork hook's reader holds (forksafe._drivers.socket_reader).
    held = raw.pgconn if _drivers.driver_of(raw) == "psycopg" else raw
    ref = weakref.ref(held)
    assert fork_child(lambda: 0) == 0
    del wrapper, raw, held
    gc.collect()
    assert ref() is None


def test_a_child_whose_first_query_runs_in_another_thread_resets_the_forking_threads_too(
    keep_open: None, vendor: str
) -> None:
    """The fork hook leaves the rest of the reset for the first use, whichever thread it is.

    It is done for the thread that forked: its wrapper forgets the parent's connection
    (and an in-memory SQLite database of that thread stays, as at the fork).
    """
    if vendor == "sqlite":
        pytest.skip("server sessions (the in-memory SQLite case is the next test)")
    parent = _sessions.backend_id()

    def child() -> tuple[bool, int, int]:
        other: list[int] = []
        thread = threading.Thread(target=lambda: other.append(_sessions.backend_id()))
        thread.start()
        thread.join(30)
        forgotten = connection.connection is None  # the other thread's first use did it
        mine = _sessions.backend_id()
        connection.close()
        return forgotten, mine, other[0]

    forgotten, mine, other = run_in_child(child)
    assert forgotten
    assert parent not in (mine, other)
    assert _sessions.backend_id() == parent


@pytest.fixture
def memory_db(vendor: str) -> Iterator[Any]:
    """A wrapper on a private in-memory SQLite database holding one row, ``t.x = 42``."""
    if vendor != "sqlite":
        pytest.skip("in-memory SQLite only")
    conn = connections.create_connection("default")
    conn.settings_dict = {**conn.settings_dict, "NAME": ":memory:"}
    try:
        with conn.cursor() as cursor:
            cursor.execute("CREATE TABLE t (x int)")
            cursor.execute("INSERT INTO t VALUES (42)")
        yield conn
    finally:
        conn.close()


def _read_x(conn: Any) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT x FROM t")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_a_child_keeps_its_in_memory_sqlite_when_another_thread_uses_a_connection_first(
    keep_open: None, memory_db: Any
) -> None:
    def child() -> int:
        thread = threading.Thread(target=lambda: Item.objects.count())
        thread.start()
        thread.join(30)
        return _read_x(memory_db)

    assert run_in_child(child) == 42


def test_prepare_fork_leaves_in_memory_sqlite_alone(memory_db: Any) -> None:
    forksafe.prepare_fork()
    assert memory_db.connection is not None
    # The child keeps its private copy of the in-memory database.
    assert run_in_child(lambda: _read_x(memory_db)) == 42


def test_after_fork_in_child_without_a_fork_is_a_no_op() -> None:
    parent_backend = _sessions.backend_id()
    forksafe.after_fork_in_child()
    forksafe.after_fork_in_child()
    assert _sessions.backend_id() == parent_backend


def test_after_fork_in_child_twice_in_child_is_harmless(keep_open: None) -> None:
    def child() -> tuple[int, int]:
        first = _sessions.backend_id()
        forksafe.after_fork_in_child()
        return first, _sessions.backend_id()

    first, second = run_in_child(child)
    assert first == second


def test_install_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="frobnicate"):
        forksafe.install(frobnicate=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="close_before_fork"):
        forksafe.install(close_before_fork="yes")  # type: ignore[arg-type]


def test_registry_keeps_no_wrapper_alive() -> None:
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    ref = weakref.ref(wrapper)
    assert any(e.wrapper is wrapper for e in _registry.entries())
    wrapper.close()
    del wrapper
    gc.collect()
    assert ref() is None
    assert not any(e.wrapper is None for e in _registry.entries())


def test_registry_sees_connections_of_every_thread() -> None:
    seen: list[int] = []
    done = threading.Event()
    release = threading.Event()

    def worker() -> None:
        _sessions.backend_id()
        seen.append(threading.get_ident())
        done.set()
        release.wait(10)
        connections.close_all()

    t = threading.Thread(target=worker)
    t.start()
    done.wait(10)
    try:
        owners = {e.thread_id for e in _registry.entries() if e.wrapper is not None}
        assert seen[0] in owners
    finally:
        release.set()
        t.join(10)


def test_failing_detach_parks_the_connection_and_child_goes_on(keep_open: None) -> None:
    """A raw connection forksafe cannot understand is parked, never closed, and logged."""

    class Opaque:
        closed = False

        def close(self) -> None:  # pragma: no cover - must never be called
            raise AssertionError("close() called on an inherited connection")

    wrapper = connections.create_connection("default")
    wrapper.connection = Opaque()
    _registry.register(wrapper)

    def forgotten_at_first_use() -> int:
        # The fork hook detached what has a socket; the rest of the reset runs before
        # the child's first use of a connection (here: the public entry point).
        forksafe.after_fork_in_child()
        return 0 if wrapper.connection is None else 1

    assert fork_child(forgotten_at_first_use) == 0

    def child() -> tuple[bool, list[str]]:
        # Run the reset again, by hand, with a log handler attached.
        messages: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("forksafe").addHandler(handler)
        wrapper.connection = Opaque()
        _registry.register(wrapper, pid=_registry.UNKNOWN_PID)
        _fork._reset_pid = 0  # pretend this process has not been reset yet
        _drivers._reported.clear()  # the hook reported this class already (once per class)
        forksafe.after_fork_in_child()
        return wrapper.connection is None, messages

    try:
        dropped, messages = run_in_child(child)
        assert dropped
        # The log names the alias and the connection's class.
        assert any("connection of alias 'default' is a tests.test_fork." in m for m in messages), (
            messages
        )
    finally:
        wrapper.connection = None


def test_child_failure_is_reported_to_the_parent() -> None:
    """The helper the other tests rely on: an assertion in the child fails the test."""

    def child() -> None:
        raise AssertionError("boom in child")

    with pytest.raises(ChildFailed, match="boom in child"):
        run_in_child(child)


def _hang() -> int:
    time.sleep(60)
    return 0


def test_child_that_hangs_is_killed_at_its_deadline_and_fails_the_test() -> None:
    start = time.monotonic()
    with pytest.raises(ChildFailed, match=r"did not report within 1\.0 s: killed"):
        run_in_child(_hang, timeout=1.0)
    with pytest.raises(ChildFailed, match=r"still running after 1\.0 s: killed"):
        fork_child(_hang, timeout=1.0)
    assert time.monotonic() - start < 10


def test_child_never_enters_a_shared_connection_busy_in_another_thread(
    keep_open: None, vendor: str
) -> None:
    """A wrapper shared across threads may be mid-query at fork time, its driver lock held
    by a thread the child does not have: the child detaches it without entering it."""
    if vendor == "sqlite":
        pytest.skip("needs a server query that blocks")
    sleep_sql = "SELECT pg_sleep(3)" if vendor == "postgresql" else "SELECT SLEEP(3)"
    wrapper = connections.create_connection("default")
    wrapper.inc_thread_sharing()
    wrapper.ensure_connection()
    with wrapper.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid()" if vendor == "postgresql" else "SELECT CONNECTION_ID()"
        )
        (session,) = cursor.fetchone()
    errors: list[BaseException] = []

    def sleeper() -> None:
        try:
            with wrapper.cursor() as cursor:
                cursor.execute(sleep_sql)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    # Fork only once the server shows the query running: the driver holds its lock.
    wait_for_running_query(session)
    try:
        # The hook ran (or hangs: killed after 10 s, the test fails) before the body.
        assert fork_child(lambda: 0, timeout=10) == 0
    finally:
        thread.join(30)
        wrapper.dec_thread_sharing()
        wrapper.close()
    assert errors == []  # the parent's query was not disturbed


def wait_for_running_query(session: int, timeout: float = 10) -> None:
    """Wait until the server shows ``session`` running a query (PostgreSQL ``active``,
    MariaDB ``Query``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {s.id: s.state for s in _sessions.list_sessions() or []}
        if found.get(session) in ("active", "Query"):
            return
        assert time.monotonic() < deadline, f"session {session} never ran its query: {found}"
        time.sleep(0.02)


# --- forking inside a transaction, plain Django vs forksafe (fresh interpreters) -----------


def _transaction_fork(scenario: str, mode: str, url: str) -> dict[str, Any]:
    result: dict[str, Any] = run_python(
        "-m", "tests.harness.programs.transaction_fork", scenario, mode, url
    )
    return result


@pytest.mark.parametrize("mode", ["forksafe", "plain"])
def test_fork_with_autocommit_off_keeps_the_parents_uncommitted_row_out_of_the_child(
    db_url: str, vendor: str, mode: str
) -> None:
    """forksafe: the child neither sees nor commits the parent's row; the parent's commit
    stores it once. Control (plain): the child shares the transaction and commits it."""
    if vendor == "sqlite":
        pytest.skip("SQLite: the child would wait for the parent's write lock")
    res = _transaction_fork("autocommit_off", mode, db_url)
    assert "error" not in res["child"], res
    assert res["commit_error"] is None, res
    if mode == "plain":
        assert res["child"]["seen"] == ["parent"], res
        assert res["visible_before_commit"] == ["child", "parent"], res
        return
    # os.fork() closes nothing by default, so nothing is left open "on purpose": no warning.
    assert not any("inside a transaction" in w for w in res["warnings"]), res
    assert res["child"]["seen"] == [], res
    assert res["visible_before_commit"] == ["child"], res  # the child committed its own only
    assert res["rows"] == ["child", "parent"], res  # the parent's row exactly once


@pytest.mark.parametrize("mode", ["forksafe", "plain"])
def test_sqlite_parent_in_a_write_transaction_survives_a_child_that_exits_normally(
    driver: str, tmp_path: Path, mode: str
) -> None:
    """forksafe parks the inherited handle, so the child's exit (which unwinds the atomic
    block and finalizes the interpreter) cannot roll back or delete the parent's journal.
    Control (plain): the parent's commit fails with "disk I/O error"."""
    if driver != "sqlite3":
        pytest.skip("runs once, in the sqlite3 run (a private SQLite file, no server)")
    res = _transaction_fork("sqlite_write", mode, f"sqlite:///{tmp_path / 'write.sqlite3'}")
    assert res["child_exit"] == 0, res
    if mode == "plain":
        assert res["commit_error"] is not None, res
        return
    assert res["commit_error"] is None, res
    assert res["rows"] == ["after fork", "before fork"], res
    assert res["integrity"] == "ok", res


# --- the server's own count of sessions that ended without a goodbye ----------------------


@pytest.mark.parametrize("close", [True, False], ids=["closes", "control-os-exit-holding"])
def test_child_that_closes_its_session_is_not_counted_abandoned(
    keep_open: None, vendor: str, close: bool
) -> None:
    """What every "closed at exit" assertion relies on: a child that closes its own session
    before ``os._exit`` leaves the server's counter alone; the control, a child that exits
    holding its session, moves it -- so the assertion can fail."""
    if vendor == "sqlite":
        pytest.skip("SQLite has no sessions to abandon")
    _sessions.backend_id()  # the parent's session: inherited, detached in the child
    before = abandoned_before(vendor)

    def child() -> int:
        backend = _sessions.backend_id()  # a session of the child's own
        if close:
            connections.close_all()
        return backend

    backend = run_in_child(child)  # the child ends with os._exit
    wait_sessions_gone({backend})
    if close:
        assert_none_abandoned(before)
    else:
        assert before is not None and abandoned_after(before) == before + 1
