"""A parent never loses its session state or an open cursor because it forked.

Default configuration (``forksafe.install()`` with no option). The parent holds an
advisory lock (PostgreSQL ``pg_advisory_lock``, MariaDB ``GET_LOCK``) and a
temporary table on an idle connection, or is half-way through reading a result
(raw cursor, ORM ``.iterator(chunk_size=10)``: a server-side cursor on PostgreSQL),
and forks children that query and exit. The controls show what closing the
parent's connection at fork time (the old default) does to the same parent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections

import forksafe
from forksafe import _fork
from forksafe._sessions import backend_id, own_connection
from tests.harness.forking import run_in_child
from tests.testapp.models import Item

pytestmark = pytest.mark.usefixtures("db")

ROWS = 60
FORK_EVERY = 15
LOCK_ID = 424242
LOCK_NAME = "forksafe-session-state"


@pytest.fixture
def default_options() -> Iterator[None]:
    """forksafe's options exactly as a fresh ``install()`` leaves them."""
    saved = _fork._options
    _fork._options = _fork._Options()
    yield
    _fork._options = saved


@pytest.fixture
def rows(db: None) -> None:
    Item.objects.bulk_create(Item(name=f"row {i:02}") for i in range(ROWS))


def _child_query() -> int:
    """What each child does: a query of its own, its session closed before it exits."""
    try:
        return Item.objects.count()
    finally:
        connections.close_all()


def _fork_with_os_fork() -> None:
    assert run_in_child(_child_query) == ROWS


def _process_target() -> None:
    if _child_query() != ROWS:
        os._exit(3)


def _fork_with_forksafe_process() -> None:
    process = forksafe.get_context("fork").Process(target=_process_target)
    process.start()
    process.join(60)
    assert process.exitcode == 0


def _fork_and_close_like_before() -> None:
    """The control: what the old default pre-fork cleanup did to the parent."""
    connection.close()
    _fork_with_os_fork()


FORKS: dict[str, Callable[[], None]] = {
    "os.fork": _fork_with_os_fork,
    "forksafe Process": _fork_with_forksafe_process,
}

# --- session state ----------------------------------------------------------------------------


def _take_state(vendor: str) -> None:
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_ID])
        else:
            cursor.execute("SELECT GET_LOCK(%s, 0)", [LOCK_NAME])
        cursor.execute("CREATE TEMPORARY TABLE forksafe_tmp (x int)")
        cursor.execute("INSERT INTO forksafe_tmp VALUES (7)")


def _lock_holder(vendor: str) -> int | None:
    """Which session holds the lock, asked on a session of its own."""
    conn = own_connection()
    try:
        with conn.cursor() as cursor:
            if vendor == "postgresql":
                cursor.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
                    " AND granted",
                    [LOCK_ID],
                )
            else:
                cursor.execute("SELECT IS_USED_LOCK(%s)", [LOCK_NAME])
            row = cursor.fetchone()
    finally:
        conn.close()
    return None if row is None or row[0] is None else int(row[0])


def _temp_rows() -> list[Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT x FROM forksafe_tmp")
        return [r[0] for r in cursor.fetchall()]


@pytest.mark.parametrize(
    ("fork", "close_before_fork"), [("os.fork", None), ("forksafe Process", False)]
)
def test_parent_keeps_its_advisory_lock_and_temp_table_across_forks(
    rows: None, vendor: str, default_options: None, fork: str, close_before_fork: bool | None
) -> None:
    """``os.fork()`` closes nothing by default; the pool and process wrappers close an
    idle connection unless ``close_before_fork=False``."""
    if vendor == "sqlite":
        pytest.skip("advisory locks are server features")
    forksafe.install(close_before_fork=close_before_fork)
    _take_state(vendor)
    parent = backend_id()
    for _ in range(3):
        FORKS[fork]()
    assert backend_id() == parent
    assert _lock_holder(vendor) == parent
    assert _temp_rows() == [7]


def test_control_closing_before_the_fork_loses_the_lock_and_the_temp_table(
    rows: None, vendor: str, default_options: None
) -> None:
    if vendor == "sqlite":
        pytest.skip("advisory locks are server features")
    forksafe.install(close_before_fork=True)  # the pre-fork cleanup at every os.fork()
    _take_state(vendor)
    parent = backend_id()
    _fork_with_os_fork()
    assert backend_id() != parent
    assert _lock_holder(vendor) is None
    with pytest.raises(Exception, match="forksafe_tmp"):
        _temp_rows()


# --- open cursors -----------------------------------------------------------------------------


def _read_raw_forking(fork: Callable[[], None]) -> list[str]:
    names = []
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT name FROM {Item._meta.db_table} ORDER BY name")
        for i, (name,) in enumerate(cursor, 1):
            names.append(name)
            if i % FORK_EVERY == 0:
                fork()
    return names


def _read_iterator_forking(fork: Callable[[], None]) -> list[str]:
    names = []
    for i, item in enumerate(Item.objects.order_by("name").iterator(chunk_size=10), 1):
        names.append(item.name)
        if i % FORK_EVERY == 0:
            fork()
    return names


READERS = {"raw cursor": _read_raw_forking, "iterator": _read_iterator_forking}
EXPECTED = [f"row {i:02}" for i in range(ROWS)]


@pytest.mark.parametrize("fork", list(FORKS))
@pytest.mark.parametrize("reader", list(READERS))
def test_parent_reading_a_result_forks_every_15_rows_and_reads_every_row(
    rows: None, default_options: None, reader: str, fork: str
) -> None:
    forksafe.install()
    parent = backend_id()
    assert READERS[reader](FORKS[fork]) == EXPECTED
    assert backend_id() == parent


@pytest.mark.parametrize("reader", list(READERS))
def test_prepare_fork_and_close_before_fork_leave_a_connection_with_an_open_cursor_open(
    rows: None, default_options: None, reader: str
) -> None:
    forksafe.install(close_before_fork=True)
    parent = backend_id()

    def fork_explicitly() -> None:
        forksafe.prepare_fork()
        _fork_with_os_fork()

    assert READERS[reader](fork_explicitly) == EXPECTED
    assert backend_id() == parent


@pytest.mark.parametrize("reader", list(READERS))
def test_control_closing_the_parent_connection_at_each_fork_breaks_the_read(
    rows: None, default_options: None, vendor: str, driver: str, reader: str
) -> None:
    breaks = {
        "raw cursor": {"psycopg2"},
        "iterator": {"psycopg", "psycopg2", "mysqlclient"},
    }[reader]
    if driver not in breaks:
        pytest.skip(f"{driver} reads a buffered result after its connection closed")
    with pytest.raises(Exception):  # noqa: B017 - each driver raises its own error
        names = READERS[reader](_fork_and_close_like_before)
        assert names == EXPECTED  # mysqlclient reads all, then fails at cursor close
