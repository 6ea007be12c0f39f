"""Per-driver knowledge: find an inherited connection's socket and detach it.

Everything here runs in a *forked child* on a raw DB-API connection object that
the parent opened. The rule is: **no byte may reach the server**. The parent
still uses the same server session over the same socket, and every driver's
``close()`` sends a goodbye (PostgreSQL ``Terminate``, MySQL ``COM_QUIT``) that
makes the server end that session for the parent too.

The technique (borrowed from Ruby mysql2's ``Client#discard!``): ``os.dup2`` a
descriptor of ``/dev/null`` over the inherited socket descriptor. From then on,
whatever the driver writes goes to ``/dev/null``, and the descriptor number stays
occupied until the driver itself closes it, so it can never be reused by a new
socket that would then receive the old connection's goodbye (which is what a
bare ``os.close(fd)`` risks). TLS connections need nothing more: their
close_notify goes to ``/dev/null`` too.

After that, the driver object is *kept*, never closed nor freed: parked for the
rest of the child's life (:func:`park`). Freeing it would buy the child nothing
and cost it time and memory: it sits in pages shared copy-on-write with the
parent, and freeing (libpq's ``PQfinish``, ``mysql_close``, the Python objects'
deallocation) writes to them, so the child takes a page fault and a private copy
of each page it touches. Kept, it can never say goodbye either: it is never
deallocated, and anything it could still write goes to ``/dev/null``. Its
descriptor number stays taken by ``/dev/null`` for the child's life.

=============  =========================
driver         socket
=============  =========================
psycopg 3      ``conn.pgconn.socket``
psycopg2       ``conn.fileno()``
mysqlclient    ``conn.fileno()``
PyMySQL        ``conn._sock.fileno()``
sqlite3        (file handles): parked, see below
=============  =========================

Finding the socket calls no driver method that takes a lock, so connections
that *another* thread of the parent was using (and may have been inside when
the process forked: that thread does not exist in the child) are detached the
same way.

SQLite: the SQLite documentation forbids carrying a connection across
``fork()`` (https://www.sqlite.org/howtocorrupt.html#_carrying_an_open_database_connection_across_a_fork_).
Closing one in the child may roll back the parent's open write transaction
and delete its journal, so an inherited SQLite handle is *parked*: kept alive
for the rest of the child's life, never used, never closed. The child opens
its own handle on the next query.

A connection of a backend forksafe does not know is detached by the same
``dup2`` when it has a ``fileno()`` (and then left to its own deallocation,
whose goodbye goes to ``/dev/null``); without one it is parked and reported
once per class. Anything that fails is parked the same way: a leaked object
never says goodbye.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, cast

logger = logging.getLogger("forksafe")

__all__ = [
    "detach",
    "detach_native_pools",
    "detach_sockets",
    "driver_of",
    "native_pools",
    "pool_figures",
    "pool_registries",
    "open_devnull",
    "park",
    "socket_reader",
]

# What park() keeps. Its own reference count is raised once, here, so that the
# list -- and everything in it -- outlives interpreter finalization, which
# clears module globals (and would deallocate a list held only by one).
_parked: list[Any] = []
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_parked))


def driver_of(raw: Any) -> str:
    """Name the DB-API driver of a raw connection: ``psycopg``, ``MySQLdb``, ..."""
    cls = type(raw)
    driver = _driver_by_type.get(cls)
    if driver is None:
        # Found once per class (at registration, in the parent): a forked child
        # only looks it up, allocating nothing.
        driver = _driver_by_type[cls] = cls.__module__.partition(".")[0]
    return driver


_driver_by_type: dict[type, str] = {}


def park(obj: Any) -> None:
    """Keep ``obj`` alive until the process ends: never closed, never deallocated.

    Not even by interpreter finalization, which would deallocate an object
    held only by a module global (mysqlclient's deallocation sends
    ``COM_QUIT``, SQLite's may roll back a journal). O(1): one list append.
    """
    _parked.append(obj)


def _socket_fd(raw: Any, driver: str) -> int | None:
    """The descriptor of ``raw``'s socket, or ``None`` if it has none (closed)."""
    if driver == "pymysql":
        sock = raw._sock
        return None if sock is None else int(sock.fileno())
    if driver == "psycopg":
        # The C-level status (1: CONNECTION_BAD, also after close()), not the
        # Python property ``closed`` that reads it: less code run in the child.
        pgconn = raw.pgconn
        if pgconn.status == 1:
            return None
        fd: int = pgconn.socket
        return fd
    if driver == "psycopg2":
        return None if raw.closed else int(raw.fileno())  # ``closed``: an int
    if driver == "MySQLdb":
        return int(raw.fileno()) if raw.open else None  # ``open``: an int
    # A backend forksafe does not know: the DB-API has no standard for this, but
    # many connections (and the sockets under them) expose ``fileno()``.
    fileno = getattr(raw, "fileno", None)
    if not callable(fileno):
        raise _NoDescriptor
    return int(fileno())


class _NoDescriptor(LookupError):
    """A connection forksafe does not know, with no ``fileno()``."""


# Unknown connection classes already reported in this process: once each.
_reported: set[type] = set()


def open_devnull() -> int:
    """A new descriptor open on ``/dev/null`` (close-on-exec); the caller closes it."""
    return os.open(_DEVNULL, _DEVNULL_FLAGS)


# Computed once: in a forked child, every object allocated is a page written.
_DEVNULL = os.fsencode(os.devnull)
_DEVNULL_FLAGS = os.O_RDWR | os.O_CLOEXEC


def _point_at_devnull(fd: int, devnull: int | None) -> None:
    if devnull is not None:
        os.dup2(devnull, fd, inheritable=False)
        return
    devnull = open_devnull()
    try:
        os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


def detach(raw: Any, *, owned: bool, alias: str = "?", devnull: int | None = None) -> str:
    """Detach ``raw`` from its server session in this (forked) process, without network I/O.

    Points its socket at ``/dev/null`` and parks it (:func:`park`): it is
    never closed nor freed in this process.

    ``owned`` is true when the calling thread is the one that used ``raw`` in
    the parent (or nothing else can be inside it, like a pool's idle
    connection); ``alias`` names the connection in log messages.

    ``devnull``: a descriptor open on ``/dev/null`` to use (:func:`open_devnull`;
    the caller closes it), so that a reset of several connections opens it
    once; by default one is opened for this call.

    Returns what was done, for logging and stats: ``"detached"``,
    ``"closed-already"`` or ``"parked"``. Never raises.
    """
    driver = driver_of(raw)
    if driver == "sqlalchemy":
        # django-db-connection-pool gives Django a SQLAlchemy pool's proxy (a
        # _ConnectionFairy). Kept: its finalizer would hand the connection back to the pool.
        park(raw)
        raw = raw.dbapi_connection
        if raw is None:
            return "closed-already"
        driver = driver_of(raw)
    if driver == "sqlite3":
        park(raw)
        return "parked"
    try:
        fd = _socket_fd(raw, driver)
        if fd is None or fd < 0:  # -1: a close() in another thread got that far
            return "closed-already"
        _point_at_devnull(fd, devnull)
    except _NoDescriptor:
        if type(raw) not in _reported:
            _reported.add(type(raw))
            logger.warning(
                "forksafe: the inherited connection of alias %r is a %s.%s, which forksafe"
                " does not know and which has no fileno(); it is kept open and unused in"
                " this process (never closed, so it cannot say goodbye on the parent's"
                " socket). Reported once per connection class.",
                alias,
                type(raw).__module__,
                type(raw).__qualname__,
            )
        park(raw)
        return "parked"
    except Exception as exc:
        if driver == "MySQLdb" and "thread" in str(exc):
            # mysqlclient 2.2+ refuses to touch a connection another thread was
            # using at fork time (that thread does not exist here). Parking it is
            # the safe answer: it is never deallocated, so never says COM_QUIT.
            logger.info(
                "forksafe: the inherited mysqlclient connection of alias %r was busy in"
                " another thread at fork time; it is kept unused in this process",
                alias,
            )
            park(raw)
            return "parked"
        logger.warning(
            "forksafe: could not find the socket of the inherited %s connection of"
            " alias %r (%s); it is kept open and unused in this process so that it"
            " never says goodbye to the server",
            driver,
            alias,
            "used by this thread" if owned else "used by another thread at fork time",
            exc_info=True,
        )
        park(raw)
        return "parked"
    park(raw)
    return "detached"


def socket_reader(raw: Any, driver: str) -> Callable[[], int] | None:
    """A callable that returns ``raw``'s socket descriptor when called, or ``None`` (SQLite).

    Made in the parent, called in a forked child (:func:`detach_sockets`): it
    reads the descriptor there, in the child's copy of the driver's state, so
    a connection that another thread of the parent closed meanwhile is never
    mistaken for a descriptor number that was reused. It is the driver's own
    C-level accessor wherever there is one (no Python code to run, no driver
    object of ours to touch in the child). It raises, or returns ``-1``, for
    a connection that is closed.
    """
    try:
        if driver == "sqlalchemy":  # django-db-connection-pool: see detach()
            inner = raw.dbapi_connection
            return None if inner is None else socket_reader(inner, driver_of(inner))
        if driver == "psycopg":
            # getattr(pgconn, "socket"): PQsocket(), raises once the connection is closed.
            # getattr takes its arguments without a tuple, so the child writes neither a
            # tuple nor the PGconn's reference count (each a page copied per fork).
            return functools.partial(getattr, raw.pgconn, "socket")
        if driver in ("psycopg2", "MySQLdb"):
            return cast("Callable[[], int]", raw.fileno)  # raises once closed
        if driver == "pymysql":
            # PyMySQL replaces its socket object when ping() reconnects: read it then.
            return functools.partial(_pymysql_socket, raw)
        if driver == "sqlite3":
            return None
        fileno = getattr(raw, "fileno", None)
        return fileno if callable(fileno) else None
    except Exception:  # whatever this cannot read, detach() handles later
        return None


def _pymysql_socket(raw: Any) -> int:
    sock = raw._sock
    return -1 if sock is None else int(sock.fileno())


def detach_sockets(readers: tuple[Callable[[], int], ...]) -> None:
    """Point the socket that each reader (:func:`socket_reader`) names at ``/dev/null``.

    The urgent half of :func:`detach`, for a fork hook: afterwards no byte can
    reach the server, whatever the child does. Nothing is parked nor reported:
    :func:`detach` does that later for each connection (pointing its socket at
    ``/dev/null`` again is harmless), and until then whoever references them
    keeps them. It allocates nothing the cyclic GC tracks (a collection would
    write to every page it scans), and skips a connection that is closed or
    whose driver refuses (:func:`detach` handles those).
    """
    devnull = -1
    try:
        # range(), not ``for reader in readers``: a tuple iterator is tracked by the
        # cyclic GC, a range iterator is not.
        for i in range(len(readers)):
            try:
                fd = readers[i]()
            except Exception:
                continue
            if fd < 0:
                continue
            if devnull < 0:
                devnull = os.open(_DEVNULL, _DEVNULL_FLAGS)
            os.dup2(devnull, fd, inheritable=False)
    finally:
        if devnull >= 0:
            os.close(devnull)


def pool_registries() -> list[dict[str, Any]]:
    """Every dict, alias -> pool, of this process's connection pools.

    Django's psycopg pools (Django 5.1+,
    ``django.db.backends.postgresql.base.DatabaseWrapper._connection_pools``),
    forksafe's own (``forksafe._pool.POOLS``, used by ``forksafe.backends``) and
    django-db-connection-pool's SQLAlchemy ``QueuePool`` pools
    (``dj_db_conn_pool.core.pool_container``, a dict subclass). All are looked
    up, never imported: a process that uses none has none.
    """
    base = sys.modules.get("django.db.backends.postgresql.base")
    django_pools = getattr(getattr(base, "DatabaseWrapper", None), "_connection_pools", None)
    forksafe_pools = getattr(sys.modules.get("forksafe._pool"), "POOLS", None)
    sqlalchemy_pools = getattr(sys.modules.get("dj_db_conn_pool.core"), "pool_container", None)
    return [
        pools
        for pools in (django_pools, forksafe_pools, sqlalchemy_pools)
        if isinstance(pools, dict)
    ]


def native_pools() -> dict[str, Any] | None:
    """This process's pools by alias (Django's psycopg pools, forksafe's), if any."""
    pools: dict[str, Any] = {}
    for registry in pool_registries():
        pools.update(registry)
    return pools or None


def pool_figures() -> dict[str, dict[str, int]]:
    """This process's pools by alias: ``size``, ``idle``, ``in_use``, ``max_size``, ...

    forksafe's pools also report ``waits`` and ``timeouts`` (checkouts that waited for
    a connection, and those that gave up), Django's psycopg pools ``waits`` (psycopg_pool's
    ``requests_queued``) and ``timeouts`` (its ``requests_errors``). django-db-connection-pool's
    ``max_size`` is its ``pool_size`` plus ``max_overflow``; it counts no waits.
    """
    figures: dict[str, dict[str, int]] = {}
    for alias, pool in (native_pools() or {}).items():
        try:
            figures[alias] = _pool_figures(pool)
        except Exception:  # a pool of a version that reads differently: no figures
            logger.debug("forksafe: no figures for the pool of %r", alias, exc_info=True)
    return figures


def _pool_figures(pool: Any) -> dict[str, int]:
    if hasattr(pool, "get_stats"):  # psycopg_pool (Django's native pool)
        s = pool.get_stats()
        size, idle = s.get("pool_size", 0), s.get("pool_available", 0)
        return {
            "size": size,
            "idle": idle,
            "in_use": size - idle,
            "max_size": s.get("pool_max", 0),
            "waits": s.get("requests_queued", 0),
            "timeouts": s.get("requests_errors", 0),
        }
    if hasattr(pool, "checkedout"):  # SQLAlchemy's QueuePool (django-db-connection-pool)
        idle, in_use = pool.checkedin(), pool.checkedout()
        return {
            "size": idle + in_use,
            "idle": idle,
            "in_use": in_use,
            "max_size": pool.size() + max(pool._max_overflow, 0),
        }
    figures: dict[str, int] = pool.stats()  # forksafe's
    return figures


def detach_native_pools(devnull: int | None = None) -> int:
    """Drop the pools inherited from the parent: Django's psycopg pools, forksafe's.

    ``django.db.backends.postgresql.base.DatabaseWrapper._connection_pools`` is a
    class-level dict: alias -> ``psycopg_pool.ConnectionPool``. The child gets a
    copy of each pool with the parent's idle connections in it and none of its
    worker threads. Calling ``pool.close()`` here would say goodbye on each of
    the parent's sessions, and it takes the pool's lock, which one of the
    parent's (vanished) pool threads may have held at fork time.

    So: detach each idle connection, mark the pool closed so that its
    ``__del__`` does nothing, park it, and forget it. forksafe's pools
    (``forksafe._pool``) have the same ``_pool`` of idle connections and
    ``_closed`` flag, and are dropped the same way. The wrapper builds a new
    pool in this process on its next connect (Django ticket #36957 tracks fork
    support upstream). ``devnull`` as for :func:`detach`.

    Returns the number of pooled connections detached.
    """
    count = 0
    for pools in pool_registries():
        count += _detach_pools(pools, devnull)
    return count


def _idle_connections(pool: Any) -> list[Any]:
    """The raw connections idle in ``pool``: psycopg_pool's and forksafe's, or SQLAlchemy's."""
    idle = pool._pool
    records = getattr(idle, "queue", None)  # SQLAlchemy: a Queue of _ConnectionRecord
    if records is None:
        return list(idle)
    return [r.dbapi_connection for r in list(records) if r.dbapi_connection is not None]


def _detach_pools(pools: dict[str, Any], devnull: int | None) -> int:
    # django-db-connection-pool guards its container with a lock that a thread of the
    # parent may have held at fork time; that thread does not exist here.
    lock = getattr(pools, "lock", None)
    if lock is not None:
        lock._at_fork_reinit()
    count = 0
    for alias, pool in list(pools.items()):
        try:
            for raw in _idle_connections(pool):
                detach(raw, owned=True, alias=alias, devnull=devnull)
                count += 1
            pool._closed = True  # psycopg_pool's __del__ returns early when closed
            park(pool)
        except Exception:
            logger.warning(
                "forksafe: could not detach the native pool of alias %r; it is kept"
                " unused in this process",
                alias,
                exc_info=True,
            )
            park(pool)
    pools.clear()
    return count
