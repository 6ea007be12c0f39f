"""A connection its owner shares (``inc_thread_sharing()``) is not closed when the owner ends.

Django's own ``backends.tests.ThreadTests.test_default_connection_thread_local``
does exactly this: each of two threads shares its connection and ends; the main
thread then checks that the three connections differ, and closes the two others
itself. A thread-exit close would leave ``None`` where the test expects three
distinct connections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

import forksafe


def _djangos_thread_local_test(thread_class: Callable[..., threading.Thread]) -> None:
    """Django's test_default_connection_thread_local, with ``thread_class`` threads."""
    by_id: dict[int, BaseDatabaseWrapper] = {}
    with connection.cursor():
        pass
    by_id[id(connection)] = connection

    def runner() -> None:
        wrapper = connections[DEFAULT_DB_ALIAS]
        # Shared so that the main thread can close it later.
        wrapper.inc_thread_sharing()
        with wrapper.cursor():
            pass
        by_id[id(wrapper)] = wrapper

    try:
        for _ in range(2):
            thread = thread_class(target=runner)
            thread.start()
            thread.join()
        # Each thread's wrapper still holds its own, open connection.
        raws = {wrapper.connection for wrapper in by_id.values()}
        assert len(raws) == 3 and None not in raws
    finally:
        # ``connection`` is Django's proxy to this thread's wrapper, as in Django's test.
        for wrapper in by_id.values():
            if wrapper is not connection and wrapper.allow_thread_sharing:
                wrapper.close()
                wrapper.dec_thread_sharing()
    # The thread that received them closed them.
    assert all(w.connection is None for w in by_id.values() if w is not connection)


@pytest.mark.usefixtures("threads_installed")
def test_djangos_shared_connection_case_passes_with_install_threads(db: None) -> None:
    _djangos_thread_local_test(threading.Thread)


def test_djangos_shared_connection_case_passes_with_forksafe_thread(db: None) -> None:
    _djangos_thread_local_test(forksafe.Thread)


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
@pytest.mark.usefixtures("conn_max_age")
def test_executor_worker_leaves_a_connection_it_shares_to_the_thread_it_shares_with(
    db: None,
) -> None:
    """A task shares its worker's wrapper; the worker exits; the receiver still uses it.

    ``CONN_MAX_AGE=None``: with 0, Django's rule after the task closes it (as after a
    request), shared or not.
    """
    shared: list[BaseDatabaseWrapper] = []

    def share() -> None:
        wrapper = connections[DEFAULT_DB_ALIAS]
        wrapper.inc_thread_sharing()
        wrapper.ensure_connection()
        shared.append(wrapper)

    with forksafe.ThreadPoolExecutor(1) as executor:
        executor.submit(share).result()
    wrapper = shared[0]
    try:
        assert wrapper.connection is not None
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        wrapper.close()
        wrapper.dec_thread_sharing()


@pytest.mark.usefixtures("threads_installed")
def test_control_unshared_connections_are_still_closed_when_the_thread_ends(db: None) -> None:
    found: list[BaseDatabaseWrapper] = []

    def runner() -> None:
        connections[DEFAULT_DB_ALIAS].ensure_connection()
        found.append(connections[DEFAULT_DB_ALIAS])

    thread = threading.Thread(target=runner)
    thread.start()
    thread.join()
    assert found[0].connection is None
