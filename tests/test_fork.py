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

import pytest
from django.db import ProgrammingError, connection, connections, transaction

import forksafe
from forksafe import _fork, _registry, _sessions
from tests._forking import ChildFailed, run_in_child
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

    def child() -> dict[str, int]:
        return {alias: _sessions.backend_id(alias) for alias in ("default", "other")}

    children = run_in_child(child)
    for alias in parents:
        assert children[alias] != parents[alias]
        assert _sessions.backend_id(alias) == parents[alias]


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
        os.waitpid(pid, 0)
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
    """Stress: 4 threads keep querying while the main thread forks 200 times."""
    stop = threading.Event()
    errors: list[str] = []
    queries = [0]

    def worker() -> None:
        try:
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
    child_errors = 0
    try:
        for i in range(200):
            query = i % 10 == 0  # a querying child every 10th fork keeps the run short
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 0
                try:
                    if query and _sessions.backend_id() == parent_backend:
                        code = 3
                except BaseException:
                    code = 2
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
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
    forksafe.install(close_before_fork=True)
    _sessions.backend_id()
    assert connection.connection is not None
    forksafe.prepare_fork()
    assert connection.connection is None
    forksafe.prepare_fork()  # repeated: harmless


def test_prepare_fork_leaves_in_memory_sqlite_alone(vendor: str) -> None:
    if vendor != "sqlite":
        pytest.skip("in-memory SQLite only")
    conn = connections.create_connection("default")
    conn.settings_dict = {**conn.settings_dict, "NAME": ":memory:"}
    try:
        conn.ensure_connection()
        with conn.cursor() as cursor:
            cursor.execute("CREATE TABLE t (x int)")
            cursor.execute("INSERT INTO t VALUES (42)")
        forksafe.prepare_fork()
        assert conn.connection is not None

        def child() -> int:
            with conn.cursor() as cursor:
                cursor.execute("SELECT x FROM t")
                row = cursor.fetchone()
            assert row is not None
            return int(row[0])

        # The child keeps its private copy of the in-memory database.
        assert run_in_child(child) == 42
    finally:
        conn.close()


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

    pid = os.fork()  # the hook runs in the child before anything else
    if pid == 0:  # pragma: no cover - child
        os._exit(0 if wrapper.connection is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    def child() -> tuple[bool, list[str]]:
        # Run the reset again, by hand, with a log handler attached.
        messages: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("forksafe").addHandler(handler)
        wrapper.connection = Opaque()
        _registry.register(wrapper, pid=_registry.UNKNOWN_PID)
        _fork._reset_pid = 0  # pretend this process has not been reset yet
        forksafe.after_fork_in_child()
        return wrapper.connection is None, messages

    try:
        dropped, messages = run_in_child(child)
        assert dropped
        # The log names the driver (the raw connection's top-level module) and the alias.
        assert any("inherited tests connection of alias 'default'" in m for m in messages)
    finally:
        wrapper.connection = None


def test_child_failure_is_reported_to_the_parent() -> None:
    """The helper the other tests rely on: an assertion in the child fails the test."""

    def child() -> None:
        raise AssertionError("boom in child")

    with pytest.raises(ChildFailed, match="boom in child"):
        run_in_child(child)


def test_child_never_enters_a_shared_connection_busy_in_another_thread(
    keep_open: None, vendor: str
) -> None:
    """A wrapper shared across threads may be mid-query at fork time, its driver lock held
    by a thread the child does not have: the child detaches it without entering it."""
    if vendor == "sqlite":
        pytest.skip("needs a server query that blocks")
    sleep_sql = "SELECT pg_sleep(1.5)" if vendor == "postgresql" else "SELECT SLEEP(1.5)"
    wrapper = connections.create_connection("default")
    wrapper.inc_thread_sharing()
    wrapper.ensure_connection()
    started = threading.Event()

    def sleeper() -> None:
        with wrapper.cursor() as cursor:
            started.set()
            cursor.execute(sleep_sql)

    thread = threading.Thread(target=sleeper)
    thread.start()
    started.wait(10)
    time.sleep(0.3)  # the query is in flight: the driver holds its lock
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: the hook ran (or hangs) before this
            os._exit(0)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child hung in the after-fork reset")
        assert status is not None and os.waitstatus_to_exitcode(status) == 0
    finally:
        thread.join(10)
        wrapper.dec_thread_sharing()
        wrapper.close()
