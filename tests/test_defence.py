"""The second line of defence: forks that no hook saw, caught at the connection's next use.

A child forked by C code (``fork()`` from ``ctypes.PyDLL``: no Python at-fork hook
runs, exactly as in a uWSGI worker without ``master``) inherits the parent's
connections with nothing reset. Django's wrapper then notices, before its next
cursor (``ensure_connection``) or ``close()``, that its connection was opened by
another process: it detaches it with no network I/O, logs a WARNING saying which
path bypassed the hooks, and connects afresh.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

import forksafe
from forksafe import _drivers, _guard
from forksafe._sessions import abandoned_sessions, backend_id
from forksafe.signals import bypass_detected, connection_detached, fork_prepared
from tests.harness.forking import run_in_child
from tests.testapp.models import Item

pytestmark = pytest.mark.usefixtures("db")

_libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL, as the forking C code would


def c_fork() -> int:
    """``fork()`` straight from C: Python's ``os.register_at_fork`` hooks do not run."""
    return int(_libc.fork())


class _Records(logging.Handler):
    """Collects the ``forksafe`` log records of the process it runs in."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def forksafe_log() -> Iterator[_Records]:
    logger = logging.getLogger("forksafe")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def without_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain Django's wrapper methods (the control): nothing checks the pid."""
    for name in ("ensure_connection", "commit", "rollback", "close"):
        patched = BaseDatabaseWrapper.__dict__[name]
        monkeypatch.setattr(BaseDatabaseWrapper, name, patched.__forksafe_original__)


def _server_only(vendor: str) -> None:
    if vendor == "sqlite":
        pytest.skip("a shared server session needs a server (SQLite handles are parked)")


def test_child_forked_in_c_gets_a_session_of_its_own_at_first_query(vendor: str) -> None:
    Item.objects.create(name="parent")
    parent = backend_id()
    abandoned = abandoned_sessions()

    def child() -> tuple[int, int]:
        try:
            return backend_id(), Item.objects.count()
        finally:
            connections.close_all()  # the child's own session, closed cleanly

    child_backend, count = run_in_child(child, fork=c_fork)
    assert count == 1
    assert child_backend != parent
    assert backend_id() == parent
    if abandoned is not None:  # nobody left a session without a goodbye
        assert abandoned_sessions() == abandoned


def test_control_without_the_guard_a_c_forked_child_queries_on_the_parent_session(
    vendor: str, without_guard: None
) -> None:
    _server_only(vendor)
    parent = backend_id()
    # The child must not close anything here: that would end the parent's session.
    assert run_in_child(backend_id, fork=c_fork) == parent


def test_close_all_in_a_c_forked_child_leaves_the_parent_session_alive(vendor: str) -> None:
    _server_only(vendor)
    parent = backend_id()
    run_in_child(connections.close_all, fork=c_fork)
    assert backend_id() == parent


def test_control_close_all_in_a_c_forked_child_kills_the_parent_session(
    vendor: str, without_guard: None
) -> None:
    _server_only(vendor)
    parent = backend_id()
    run_in_child(connections.close_all, fork=c_fork)
    try:
        after: int | None = backend_id()
    except Exception:  # the session is gone; Django reports it on the next query
        after = None
        connection.close()
    assert after != parent


def test_bypass_is_logged_counted_and_signalled_once_per_fork(forksafe_log: _Records) -> None:
    backend_id("default")
    backend_id("other")
    seen: list[dict[str, Any]] = []

    def on_bypass(sender: Any, **kwargs: Any) -> None:
        seen.append({"signal": "bypass", **{k: kwargs[k] for k in ("alias", "driver", "path")}})

    def on_detached(sender: Any, **kwargs: Any) -> None:
        seen.append({"signal": "detached", **{k: kwargs[k] for k in ("alias", "driver", "how")}})

    bypass_detected.connect(on_bypass)
    connection_detached.connect(on_detached)
    try:

        def child() -> dict[str, Any]:
            forksafe_log.records.clear()
            backend_id("default")
            backend_id("other")
            backend_id("default")
            return {
                "seen": seen,
                "warnings": forksafe_log.lines(logging.WARNING),
                "debug": forksafe_log.lines(logging.DEBUG),
                "stats": forksafe.stats(),
            }

        report = run_in_child(child, fork=c_fork)
    finally:
        bypass_detected.disconnect(on_bypass)
        connection_detached.disconnect(on_detached)
    driver = _drivers.driver_of(connection.connection)
    bypasses = [s for s in report["seen"] if s["signal"] == "bypass"]
    assert [(s["alias"], s["driver"]) for s in bypasses] == [("default", driver)]
    assert "without running Python's at-fork hooks" in bypasses[0]["path"]
    detached = {(s["alias"], s["how"]) for s in report["seen"] if s["signal"] == "detached"}
    how = "parked" if connection.vendor == "sqlite" else "detached"
    assert detached == {("default", how), ("other", how)}
    [warning] = report["warnings"]  # one per bypass, not one per connection
    assert "forksafe.after_fork_in_child()" in warning
    assert sum("detached inherited connection" in line for line in report["debug"]) == 2
    assert report["stats"]["default"]["bypasses"] == 1
    assert report["stats"]["other"]["bypasses"] == 1
    assert report["stats"]["default"]["detached"] == 1
    assert forksafe.stats()["default"]["bypasses"] == 0  # the parent's own counts


def test_hooked_fork_sends_fork_prepared_and_connection_detached_without_bypass(
    forksafe_log: _Records,
) -> None:
    backend_id()
    seen: list[str] = []

    def on_prepared(sender: Any, **kwargs: Any) -> None:
        seen.append(f"prepared closed={kwargs['closed']}")

    def on_detached(sender: Any, **kwargs: Any) -> None:
        seen.append(f"detached {kwargs['alias']}")

    def on_bypass(sender: Any, **kwargs: Any) -> None:
        seen.append("bypass")

    fork_prepared.connect(on_prepared)
    connection_detached.connect(on_detached)
    bypass_detected.connect(on_bypass)
    try:
        in_child = run_in_child(lambda: (backend_id(), list(seen))[1])
    finally:
        fork_prepared.disconnect(on_prepared)
        connection_detached.disconnect(on_detached)
        bypass_detected.disconnect(on_bypass)
    # The parent saw its own pre-fork hook (nothing closed by default); the child
    # detached the inherited connection in its at-fork hook: no bypass.
    assert seen == ["prepared closed=[]"]
    assert in_child == ["prepared closed=[]", "detached default"]


def test_the_guard_is_installed_once_and_keeps_djangos_methods() -> None:
    before = {name: BaseDatabaseWrapper.__dict__[name] for name in ("ensure_connection", "close")}
    _guard.install()
    forksafe.install()
    for name, method in before.items():
        assert BaseDatabaseWrapper.__dict__[name] is method
        original = method.__forksafe_original__
        assert not hasattr(original, "__forksafe_original__")
        assert original.__qualname__ == f"BaseDatabaseWrapper.{name}"


def test_signals_without_receivers_cost_nothing_and_child_still_resets(vendor: str) -> None:
    """No receiver connected: the reset sends nothing (and works)."""
    assert not bypass_detected.receivers and not connection_detached.receivers
    parent = backend_id()
    assert run_in_child(backend_id, fork=c_fork) != parent or vendor == "sqlite"


@pytest.mark.parametrize("fork", ["os.fork", "C fork"])
def test_a_child_that_commits_before_any_query_leaves_the_parents_transaction_alone(
    vendor: str, fork: str
) -> None:
    """``commit()`` reaches the driver without ``ensure_connection()``: it is checked too.

    The parent has autocommit off and an uncommitted row. The child's first database call
    is ``transaction.commit()``: it must commit nothing of the parent's (``os.fork``: the
    hook left the rest of the reset for this first use; C fork: no hook ran at all).
    """
    _server_only(vendor)
    transaction.set_autocommit(False)
    try:
        Item.objects.create(name="parent, uncommitted")

        def child() -> int:
            transaction.commit()  # nothing of this process's own to commit
            return Item.objects.filter(name="parent, uncommitted").count()

        seen = run_in_child(child, fork=c_fork if fork == "C fork" else os.fork)
        assert seen == 0  # the child's own session does not see the parent's row
        observer = connections.create_connection("default")
        try:
            with observer.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM testapp_item")
                assert cursor.fetchone() == (0,)  # still uncommitted
        finally:
            observer.close()
        transaction.rollback()
        assert Item.objects.count() == 0
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)


def test_control_without_the_guard_a_childs_commit_commits_the_parents_transaction(
    vendor: str, without_guard: None
) -> None:
    _server_only(vendor)
    transaction.set_autocommit(False)
    try:
        Item.objects.create(name="parent, uncommitted")
        run_in_child(transaction.commit, fork=c_fork)
        transaction.rollback()  # too late: the child committed it over the shared session
        assert Item.objects.filter(name="parent, uncommitted").count() == 1
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)
