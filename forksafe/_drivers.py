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

After that, the driver's own resources are released where that is safe:

=============  =========================  =============================================
driver         socket                     release (after the dup2)
=============  =========================  =============================================
psycopg 3      ``conn.pgconn.socket``     ``pgconn.finish()`` (C, takes no Python lock)
psycopg2       ``conn.fileno()``          ``close()``, only from the owning thread
mysqlclient    ``conn.fileno()``          ``close()``, only from the owning thread
PyMySQL        ``conn._sock.fileno()``    ``_force_close()`` (never sends COM_QUIT);
                                          another thread's buffered reader is parked
sqlite3        (file handles)             never: parked, see below
=============  =========================  =============================================

Objects that belonged to *another* thread of the parent are not entered from
the child (psycopg2 holds a pthread mutex while a query runs; that thread does
not exist in the child, so the mutex would never be released). Their
deallocation later is harmless: psycopg and psycopg2 skip ``PQfinish`` in a
process that did not open the connection, PyMySQL force-closes without
``COM_QUIT``, and mysqlclient's ``COM_QUIT`` goes to ``/dev/null``.

SQLite: the SQLite documentation forbids carrying a connection across
``fork()`` (https://www.sqlite.org/howtocorrupt.html#_carrying_an_open_database_connection_across_a_fork_).
Closing one in the child may roll back the parent's open write transaction
and delete its journal, so an inherited SQLite handle is *parked*: kept alive
for the rest of the child's life, never used, never closed. The child opens
its own handle on the next query.

Anything that fails or that we do not recognise is parked the same way: a
leaked object never says goodbye.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

logger = logging.getLogger("forksafe")

__all__ = ["detach", "detach_native_pools", "driver_of", "park"]


def driver_of(raw: Any) -> str:
    """Name the DB-API driver of a raw connection: ``psycopg``, ``MySQLdb``, ..."""
    return type(raw).__module__.partition(".")[0]


def park(raw: Any) -> None:
    """Keep ``raw`` alive until the process ends, so it is never closed.

    A reference held by a module global is not enough: interpreter
    finalization clears modules and would deallocate the object, which for
    mysqlclient sends ``COM_QUIT`` and for SQLite may roll back a journal.
    An extra reference count that nothing ever releases is.
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(raw))


def _socket_fd(raw: Any, driver: str) -> int | None:
    """The descriptor of ``raw``'s socket, or ``None`` if it has none (closed)."""
    if driver == "pymysql":
        sock = raw._sock
        return None if sock is None else int(sock.fileno())
    if driver == "psycopg":
        if raw.closed:
            return None
        return int(raw.pgconn.socket)
    if driver in ("psycopg2", "MySQLdb"):
        # psycopg2: ``closed`` is an int; mysqlclient: ``open`` is an int.
        if getattr(raw, "closed", 0) or not getattr(raw, "open", 1):
            return None
        return int(raw.fileno())
    raise LookupError(f"forksafe does not know how to find the socket of {driver!r}")


def _point_at_devnull(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


def _release(raw: Any, driver: str, owned: bool) -> None:
    """Free the driver's resources; every goodbye now goes to /dev/null."""
    if driver == "psycopg":
        # Not ``close()``: on a pooled connection it may hand the connection
        # back to the parent's pool. ``finish()`` is PQfinish, no Python lock.
        raw.pgconn.finish()
    elif driver == "pymysql":
        if not owned:
            # Another thread may have been reading at fork time: the buffered
            # reader's lock is then held by a thread that does not exist here,
            # and closing the reader (now, or when it is collected) would wait
            # forever. Keep it, unclosed, for the life of the process.
            park(raw._rfile)
            raw._rfile = None
        raw._force_close()
    elif owned:
        raw.close()


def detach(raw: Any, *, owned: bool, alias: str = "?") -> str:
    """Detach ``raw`` from its server session in this (forked) process, without network I/O.

    ``owned`` is true when the calling thread is the one that used ``raw`` in
    the parent (or nothing else can be inside it, like a pool's idle
    connection): only then are driver methods that take locks called.

    ``alias`` only names the connection in log messages.

    Returns what was done, for logging and stats: ``"detached"``,
    ``"closed-already"`` or ``"parked"``. Never raises.
    """
    driver = driver_of(raw)
    if driver == "sqlite3":
        park(raw)
        return "parked"
    try:
        fd = _socket_fd(raw, driver)
        if fd is None:
            return "closed-already"
        _point_at_devnull(fd)
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
            " alias %r; it is kept open and unused in this process so that it never"
            " says goodbye to the server",
            driver,
            alias,
            exc_info=True,
        )
        park(raw)
        return "parked"
    try:
        _release(raw, driver, owned)
    except Exception:
        # The socket already points at /dev/null: parking only saves memory.
        logger.debug(
            "forksafe: releasing the detached %s connection of alias %r failed",
            driver,
            alias,
            exc_info=True,
        )
        park(raw)
    return "detached"


def detach_native_pools() -> int:
    """Drop Django's native psycopg pools (Django 5.1+) inherited from the parent.

    ``django.db.backends.postgresql.base.DatabaseWrapper._connection_pools`` is a
    class-level dict: alias -> ``psycopg_pool.ConnectionPool``. The child gets a
    copy of each pool with the parent's idle connections in it and none of its
    worker threads. Calling ``pool.close()`` here would say goodbye on each of
    the parent's sessions, and it takes the pool's lock, which one of the
    parent's (vanished) pool threads may have held at fork time.

    So: point each idle connection at /dev/null and finish it, mark the pool
    closed so that its ``__del__`` does nothing, and forget it. The wrapper
    builds a new pool in this process on its next connect
    (Django ticket #36957 tracks fork support upstream).

    Returns the number of pooled connections detached.
    """
    base = sys.modules.get("django.db.backends.postgresql.base")
    pools: dict[str, Any] | None = getattr(
        getattr(base, "DatabaseWrapper", None), "_connection_pools", None
    )
    if not pools:
        return 0
    count = 0
    for alias, pool in list(pools.items()):
        try:
            idle = list(getattr(pool, "_pool", ()))
            for raw in idle:
                detach(raw, owned=True, alias=alias)
                count += 1
            pool._closed = True  # psycopg_pool's __del__ returns early when closed
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
