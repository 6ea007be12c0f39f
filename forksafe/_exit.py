"""Closing a process's own connections before it exits: the one function every exit path calls.

Worker processes rarely end through the interpreter's normal shutdown:
multiprocessing's workers, Celery's billiard pool processes and RQ's work
horses all end with ``os._exit()``, so no driver ever says goodbye and the
server counts the session as abandoned (PostgreSQL "unexpected EOF on client
connection", MariaDB "Aborted connection"). A Django 5.1+ native pool built in
the process is worse: its ``min_size`` idle sessions are dropped the same way.

:func:`close_own_connections` is what each integration calls just before its
process ends (``forksafe.pools`` worker exit, ``forksafe.rq`` horses,
``forksafe.celery`` pool processes); :func:`close_at_exit` makes the process
that installed forksafe and its raw ``os.fork()`` children call it from
:mod:`atexit` when they exit normally (``sys.exit``, end of script). Only what
*this* process opened is closed: inherited connections and pools are detached
(no I/O) by the fork reset first.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Any

from forksafe import _closing, _drivers, _fork, _registry

logger = logging.getLogger("forksafe")

__all__ = [
    "close_at_exit",
    "close_loop_thread_connections",
    "close_native_pools",
    "close_own_connections",
]

_registered = False  # inherited by forks: one atexit callback serves a whole lineage


def close_own_connections() -> None:
    """Close this process's connections and the native pools it built, before it exits.

    Closes every connection of the calling thread (all aliases, even inside
    ``atomic``: the process is ending, the server rolls back) and then every
    Django native pool (``OPTIONS={"pool": ...}``) with its idle sessions.
    Connections owned by other threads that are still running are left alone
    (one may be mid-query). In a forked child whose reset has not run yet,
    the inherited connections are detached first, without I/O, so that
    nothing of the parent's is closed. Never raises: failures are logged.
    """
    if "django.db" not in sys.modules:
        return  # nothing can hold a connection
    from django.conf import settings

    if not settings.configured:
        return
    try:
        _fork.after_fork_in_child()  # no-op unless this is a child not reset yet
        _close_thread_connections()
        close_native_pools()
    except Exception:
        logger.warning("forksafe: closing this process's connections failed", exc_info=True)


def _thread_wrappers() -> list[Any]:
    """The calling thread's wrappers: Django's ``connections`` and the registry's.

    The registry also sees what the thread opened outside the current context (asgiref's
    ``Local`` keeps a thread's wrappers per context while it runs an event loop).
    """
    me = threading.get_ident()
    registered = [
        wrapper
        for entry in _registry.entries_of_thread(os.getpid(), me)
        if (wrapper := entry.wrapper) is not None
    ]
    return _closing.handler_wrappers() + registered


def _close_thread_connections() -> None:
    for exc in _closing.close_all(_thread_wrappers(), in_atomic="close"):
        logger.warning(
            "forksafe: closing a connection before the process exits failed",
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def close_loop_thread_connections() -> None:
    """Close what the calling thread opened, while it runs an event loop that is ending.

    For an ASGI lifespan shutdown, in the loop's thread: the application may have
    queried there while it loaded, and uvicorn re-raises ``SIGTERM`` right after the
    shutdown (see ``forksafe.asgi.answer_lifespan_in_django``), so nothing later
    closes it. Never raises: failures are logged.
    """
    for exc in _closing.close_beside_running_loop(_thread_wrappers()):
        logger.warning(
            "forksafe: closing a connection of the loop's thread at shutdown failed",
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def close_native_pools() -> None:
    """Close Django's native psycopg pools and forksafe's; the reset dropped inherited ones."""
    for pools in _drivers.pool_registries():
        _close_pools(pools)


def _close_pools(pools: dict[str, Any]) -> None:
    for alias, pool in list(pools.items()):
        try:
            # Says goodbye on each idle session (and stops psycopg_pool's threads);
            # SQLAlchemy's pools (django-db-connection-pool) call it dispose().
            close = getattr(pool, "close", None) or pool.dispose
            close()
        except Exception:
            logger.warning(
                "forksafe: closing the native pool of %r before exit failed",
                alias,
                exc_info=True,
            )
        finally:
            pools.pop(alias, None)


def close_at_exit() -> None:
    """Run :func:`close_own_connections` when this process or a fork of it exits normally.

    Registered once (``install()`` does it, in the parent): forks inherit both
    the :mod:`atexit` callback and the flag, and the callback closes only what
    the exiting process opened. The process that registered it needs it too:
    a driver that leaves the goodbye to the garbage collector sends none at
    interpreter exit (PyMySQL: the server counts an aborted client; measured
    with a uvicorn stopped by ``SIGINT`` after the application queried while
    loading). Exits through ``os._exit`` (multiprocessing, billiard, RQ) skip
    :mod:`atexit`; their integrations call :func:`close_own_connections`
    themselves.
    """
    global _registered
    if not _registered:
        atexit.register(close_own_connections)
        _registered = True


# The fork hooks call it: in the parent at install(), in a child whose parent did not.
_fork.set_exit_hook(close_at_exit)
