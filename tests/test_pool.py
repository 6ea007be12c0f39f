"""forksafe's connection pool (``forksafe.backends``), against the real servers.

Each test makes an alias of its own whose ENGINE is forksafe's backend and whose
OPTIONS say ``pool``, and judges by what the server says: session ids
(``pg_backend_pid()`` / ``CONNECTION_ID()``), the sessions it lists, and its
count of sessions that ended without a goodbye. The pool applies to psycopg2,
mysqlclient and PyMySQL; psycopg 3 keeps Django's native pool; SQLite has none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, ProgrammingError, connections, transaction

import forksafe
from forksafe import _exit, _pool, asgi
from forksafe._sessions import backend_id, list_sessions, own_connection
from tests.harness.sessions import settled_abandoned, wait_sessions_gone

_ENGINES = {"postgresql": "forksafe.backends.postgresql", "mysql": "forksafe.backends.mysql"}
_SLEEP = {"postgresql": "SELECT pg_sleep(5)", "mysql": "SELECT SLEEP(5)"}
_KILL = {"postgresql": "SELECT pg_terminate_backend(%s)", "mysql": "KILL %s"}

MakeAlias = Callable[..., str]


@pytest.fixture
def pooled(db: None, driver: str, vendor: str) -> Iterator[MakeAlias]:
    """Make aliases with forksafe's pooled ENGINE; close their pools and remove them after."""
    if driver in ("sqlite3", "psycopg"):
        pytest.skip(f"forksafe's pool is for psycopg2, mysqlclient and PyMySQL, not {driver}")
    made: list[str] = []

    def make(pool: Any = True, engine: str | None = None) -> str:
        alias = f"pool{len(made)}"
        default = connections.settings["default"]
        connections.settings[alias] = {
            **default,
            "ENGINE": engine or _ENGINES[vendor],
            "OPTIONS": {**default["OPTIONS"], "pool": pool},
        }
        made.append(alias)
        return alias

    yield make
    for alias in made:
        connections[alias].close()
        pool = _pool.POOLS.pop(alias, None)
        if pool is not None:
            pool.close()
        del connections[alias]
        del connections.settings[alias]


def _request(alias: str) -> int:
    """What a request does: a query, then Django's close at its end. The session's id."""
    try:
        return backend_id(alias)
    finally:
        connections[alias].close()


def _in_thread(target: Callable[[], Any], timeout: float = 30) -> Any:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(target())
        except BaseException as exc:
            result.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"thread still running after {timeout} s"
    return result[0]


def _kill(alias: str, session: int) -> None:
    conn = own_connection(alias)
    try:
        with conn.cursor() as cursor:
            cursor.execute(_KILL[conn.vendor] % int(session))
    finally:
        conn.close()


# Reuse -----------------------------------------------------------------------------------


def test_requests_on_a_pooled_alias_reuse_one_session_where_plain_django_connects_each_time(
    pooled: MakeAlias,
) -> None:
    plain = pooled(pool=False)  # control: the same ENGINE without the option is Django's
    alias = pooled()
    assert len({_request(plain) for _ in range(3)}) == 3
    assert len({_request(alias) for _ in range(3)}) == 1
    assert len({_in_thread(lambda: _request(alias)) for _ in range(3)}) == 1


def test_threads_never_hold_more_sessions_than_max_size(pooled: MakeAlias) -> None:
    alias = pooled({"max_size": 2, "timeout": 10})
    seen: set[int] = set()
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            session = _request(alias)
            with lock:
                seen.add(session)

    threads = [forksafe.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert 1 <= len(seen) <= 2
    assert _pool.POOLS[alias].stats()["in_use"] == 0


# What is returned ---------------------------------------------------------------------------


def test_close_rolls_back_an_open_transaction_and_returns_the_connection(
    pooled: MakeAlias,
) -> None:
    from tests.testapp.models import Item

    alias = pooled()
    conn = connections[alias]
    transaction.set_autocommit(False, using=alias)
    Item.objects.using(alias).create(name="never committed")
    first = backend_id(alias)
    conn.close()
    assert _request(alias) == first  # the same session: returned, not closed
    assert not Item.objects.using(alias).exists()  # and rolled back
    conn.close()


def test_closing_inside_atomic_rolls_back_and_returns_the_connection(pooled: MakeAlias) -> None:
    from tests.testapp.models import Item

    alias = pooled()
    with pytest.raises(ZeroDivisionError), transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="rolled back")
        first = backend_id(alias)
        connections[alias].close()
        1 / 0  # noqa: B018
    assert _request(alias) == first
    assert not Item.objects.using(alias).exists()


def test_a_connection_left_in_a_failed_transaction_is_discarded(
    pooled: MakeAlias, vendor: str
) -> None:
    if vendor != "postgresql":
        pytest.skip("MySQL has no failed-transaction state: an error leaves it usable")
    alias = pooled()
    before = settled_abandoned()
    conn = connections[alias]
    transaction.set_autocommit(False, using=alias)
    first = backend_id(alias)
    with pytest.raises(ProgrammingError), conn.cursor() as cursor:
        cursor.execute("SELECT no_such_column")
    assert conn.connection.info.transaction_status == 3  # INERROR
    conn.close()
    assert _request(alias) != first
    wait_sessions_gone({first})
    assert settled_abandoned() == before  # discarded with a goodbye


class _Interrupted(Exception):
    """What a timeout's signal handler raises in the middle of a query (Celery, RQ)."""


def test_a_connection_whose_query_was_interrupted_is_never_handed_out_again(
    pooled: MakeAlias, vendor: str
) -> None:
    alias = pooled()
    conn = connections[alias]
    first = backend_id(alias)

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(_Interrupted), conn.cursor() as cursor:
            cursor.execute(_SLEEP[vendor])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert conn._forksafe_interrupted  # type: ignore[attr-defined]  # control: it was seen
    conn.close()
    assert not conn._forksafe_interrupted  # type: ignore[attr-defined]
    second = _request(alias)
    assert second != first
    assert _request(alias) == second  # the replacement is pooled as usual
    wait_sessions_gone({first})


def test_a_connection_past_max_lifetime_is_replaced(pooled: MakeAlias) -> None:
    alias = pooled({"max_lifetime": 0.2})
    first = _request(alias)
    assert _request(alias) == first
    time.sleep(0.3)
    assert _request(alias) != first
    wait_sessions_gone({first})


# Dead sessions -----------------------------------------------------------------------------


@pytest.mark.parametrize("check_after", [3600.0, 0.0])
def test_checkout_replaces_a_session_the_server_killed_without_failing_the_request(
    pooled: MakeAlias, check_after: float, vendor: str
) -> None:
    alias = pooled({"check_after": check_after})
    before = settled_abandoned()
    first = _request(alias)
    _kill(alias, first)
    wait_sessions_gone({first})
    second = _request(alias)  # no error: the dead one is found and replaced
    assert second != first
    assert _request(alias) == second
    # MariaDB counts the session it KILLed in Aborted_clients; PostgreSQL counts a
    # terminated one apart (sessions_killed). Nothing else ended without a goodbye.
    assert settled_abandoned() == before + (vendor == "mysql")


def test_without_the_pool_a_killed_persistent_session_fails_the_next_request(
    db: None, vendor: str, driver: str
) -> None:
    """Control for the test above: Django's persistent connection hands the dead one out."""
    if vendor == "sqlite":
        pytest.skip("SQLite has no server to kill sessions")
    alias = "other"
    conn = connections[alias]
    conn.settings_dict["CONN_MAX_AGE"] = 60
    try:
        first = backend_id(alias)
        _kill(alias, first)
        wait_sessions_gone({first})
        with pytest.raises(Exception):  # noqa: B017  (each driver words it its own way)
            backend_id(alias)
    finally:
        conn.settings_dict["CONN_MAX_AGE"] = 0
        conn.close()


# Exhaustion ----------------------------------------------------------------------------------


def test_exhaustion_waits_up_to_timeout_then_names_the_alias_the_size_and_the_checked_out(
    pooled: MakeAlias,
) -> None:
    alias = pooled({"max_size": 1, "timeout": 0.5})
    backend_id(alias)  # this thread holds the only connection

    def wait() -> float:
        start = time.monotonic()
        with pytest.raises(OperationalError) as info:
            backend_id(alias)
        assert f"{alias!r}" in str(info.value)
        assert "all 1 are checked out (max_size=1)" in str(info.value)
        return time.monotonic() - start

    waited = _in_thread(wait)
    assert 0.5 <= waited < 5
    stats = _pool.POOLS[alias].stats()
    assert stats["timeouts"] == 1 and stats["waits"] == 1 and stats["in_use"] == 1
    figures = forksafe.stats()[alias]
    assert (figures["pool_timeouts"], figures["pool_in_use"], figures["pool_max_size"]) == (1, 1, 1)
    connections[alias].close()
    assert _pool.POOLS[alias].stats() == {**stats, "in_use": 0, "idle": 1}
    assert (forksafe.stats()[alias]["pool_idle"], forksafe.stats()[alias]["pool_in_use"]) == (1, 0)


def test_a_waiting_checkout_gets_the_connection_returned_meanwhile(pooled: MakeAlias) -> None:
    alias = pooled({"max_size": 1, "timeout": 10})
    held = threading.Event()

    def hold() -> int:
        session = backend_id(alias)
        held.set()
        time.sleep(0.3)
        connections[alias].close()
        return session

    holder = threading.Thread(target=lambda: sessions.append(hold()))
    sessions: list[int] = []
    holder.start()
    assert held.wait(30)
    waited_for = _request(alias)  # waits for the holder's close()
    holder.join(30)
    assert sessions == [waited_for]
    assert _pool.POOLS[alias].stats()["waits"] == 1


# Bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"size": 3}, "unknown pool option(s) size"),
        ({"max_size": "4"}, "'max_size' of DATABASES['pool0'] must be an int"),
        ({"max_size": True}, "must be an int"),
        ({"timeout": "1s"}, "must be a number of seconds"),
        ({"min_size": 5, "max_size": 2}, "min_size (5) is above max_size (2)"),
        ({"max_size": 0}, "max_size must be at least 1"),
        ({"timeout": 0}, "must be positive"),
        ("yes", "must be True or a dict"),
    ],
)
def test_bad_pool_options_raise_improperly_configured_naming_the_valid_options(
    pooled: MakeAlias, options: Any, says: str
) -> None:
    alias = pooled(options)
    with pytest.raises(ImproperlyConfigured) as info:
        connections[alias].ensure_connection()
    assert says in str(info.value)
    assert "min_size, max_size, timeout, max_idle, max_lifetime, check_after" in str(info.value)


def test_the_pool_on_an_unsupported_driver_names_the_supported_ones(
    pooled: MakeAlias, monkeypatch: pytest.MonkeyPatch, vendor: str
) -> None:
    alias = pooled()
    wrapper = connections[alias]
    # Another DB-API module with the same errors (Django maps them): only its name differs.
    other = types.ModuleType("mysql.connector")
    real = vars(wrapper.Database)  # type: ignore[attr-defined]
    other.__dict__.update({k: v for k, v in real.items() if k[:2] != "__"})
    monkeypatch.setattr(type(wrapper), "Database", other)
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    named = "mysqlclient and PyMySQL" if vendor == "mysql" else "psycopg2"
    assert f"supports {named}" in str(info.value)


def test_the_pool_refuses_persistent_connections_as_djangos_does(pooled: MakeAlias) -> None:
    alias = pooled()
    connections[alias].settings_dict["CONN_MAX_AGE"] = 60
    with pytest.raises(ImproperlyConfigured, match="persistent connections"):
        connections[alias].ensure_connection()


# Goodbyes ------------------------------------------------------------------------------------


def test_the_exit_path_closes_the_pool_with_a_goodbye_to_each_idle_session(
    pooled: MakeAlias,
) -> None:
    alias = pooled()
    before = settled_abandoned()
    sessions = {_in_thread(lambda: backend_id(alias), 30) for _ in range(1)}
    sessions |= {backend_id(alias), _in_thread(lambda: _request(alias))}
    connections[alias].close()
    assert _pool.POOLS[alias].stats()["idle"] == len(sessions) == 2
    _exit.close_native_pools()
    assert alias not in _pool.POOLS
    wait_sessions_gone(sessions)
    assert settled_abandoned() == before


def test_the_asgi_lifespan_shutdown_closes_the_pool(pooled: MakeAlias) -> None:
    alias = pooled()
    before = settled_abandoned()
    session = _request(alias)
    asyncio.run(asgi.shutdown())
    assert alias not in _pool.POOLS
    wait_sessions_gone({session})
    assert settled_abandoned() == before
    assert _request(alias) != session  # a new pool, built on demand


# Fork ----------------------------------------------------------------------------------------


def _fd_target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _socket_fd(raw: Any) -> int:
    sock = getattr(raw, "_sock", None)  # PyMySQL
    return int(sock.fileno() if sock is not None else raw.fileno())


def test_a_forked_child_detaches_the_inherited_pool_and_the_parents_is_unaffected(
    pooled: MakeAlias,
) -> None:
    alias = pooled()
    before = settled_abandoned()
    parent_session = _request(alias)
    parent_pool = _pool.POOLS[alias]
    fd = _socket_fd(parent_pool._pool[0])
    assert _fd_target(fd).startswith("socket:")  # control: the idle session's socket
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child)
        code = 1
        try:
            os.close(read)
            gone = _fd_target(fd) == "/dev/null" and alias not in _pool.POOLS
            child_session = _request(alias)
            own = _pool.POOLS[alias] is not parent_pool and _pool.POOLS[alias].pid == os.getpid()
            _exit.close_own_connections()
            os.write(write, f"{int(gone)} {int(own)} {child_session}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    with os.fdopen(read) as pipe:
        fields = [int(x) for x in pipe.read().split()]
    assert fields[:2] == [1, 1]  # detached at fork; a pool of its own
    child_session = fields[2]
    assert child_session != parent_session
    assert _request(alias) == parent_session  # the parent's idle session is still there
    wait_sessions_gone({child_session})
    assert settled_abandoned() == before


def _pooled_session(alias: str) -> tuple[int, int]:
    return os.getpid(), _request(alias)


def test_forksafe_pool_workers_use_pools_of_their_own_and_say_goodbye(pooled: MakeAlias) -> None:
    alias = pooled()
    before = settled_abandoned()
    parent_session = _request(alias)
    with forksafe.get_context("fork").Pool(2) as workers:
        results = workers.map_async(_pooled_session, [alias] * 6, chunksize=1).get(timeout=60)
        workers.close()
        workers.join()
    by_worker: dict[int, set[int]] = {}
    for pid, session in results:
        by_worker.setdefault(pid, set()).add(session)
    assert all(len(sessions) == 1 for sessions in by_worker.values())  # each reused its own
    sessions = set().union(*by_worker.values())
    assert parent_session not in sessions
    assert _request(alias) == parent_session
    wait_sessions_gone(sessions)
    assert settled_abandoned() == before


# psycopg 3 -----------------------------------------------------------------------------------


def test_with_psycopg_3_the_pool_option_is_djangos_native_pool(db: None, driver: str) -> None:
    if driver != "psycopg":
        pytest.skip("psycopg 3 only")
    from psycopg_pool import ConnectionPool

    default = connections.settings["default"]
    connections.settings["pool3"] = {
        **default,
        "ENGINE": "forksafe.backends.postgresql",
        "OPTIONS": {**default["OPTIONS"], "pool": {"min_size": 0, "max_size": 2}},
    }
    try:
        first = _request("pool3")
        assert isinstance(connections["pool3"].pool, ConnectionPool)  # type: ignore[attr-defined]
        assert "pool3" not in _pool.POOLS
        assert _request("pool3") == first
        figures = forksafe.stats()["pool3"]  # psycopg_pool's figures, read the same way
        assert (figures["pool_in_use"], figures["pool_max_size"]) == (0, 2)
        assert figures["pool_idle"] == figures["pool_size"] >= 1
    finally:
        connections["pool3"].close_pool()  # type: ignore[attr-defined]
        del connections["pool3"]
        del connections.settings["pool3"]
    assert list_sessions() is not None
