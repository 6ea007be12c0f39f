"""gunicorn integration: server hooks for ``gunicorn.conf.py``.

gunicorn's arbiter forks its workers with :func:`os.fork`, so when the
application called :func:`forksafe.install` (with ``preload_app = True`` it
did so in the arbiter) the at-fork hooks already do the work. These hooks make
the same guarantee from the configuration file alone, for applications that do
not call ``install()``, and do no work twice when both are there: a process
that already detached what it inherited has nothing left to detach.

.. code-block:: python

    # gunicorn.conf.py
    from forksafe.gunicorn import post_fork, pre_fork, worker_exit  # noqa: F401

    preload_app = True
    workers = 4
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from forksafe import _exit, _green, _registry
from forksafe._fork import after_fork_in_child, prepare_fork

__all__ = ["post_fork", "pre_fork", "worker_exit"]

logger = logging.getLogger("forksafe")


def pre_fork(server: Any, worker: Any) -> None:
    """Close the arbiter's idle connections before gunicorn forks a worker.

    gunicorn's ``pre_fork(server, worker)`` hook, in the arbiter: with
    ``preload_app = True`` it may have queried while loading; it serves no
    request, so it keeps no idle session and the worker inherits nothing to
    detach (one with an open cursor or inside a transaction is kept).
    This is :func:`forksafe.prepare_fork` (``forksafe.install()``'s at-fork hook
    closes nothing by default: the worker detaches what it inherits either way),
    and the arbiter's connection pools are closed too (Django's native ones,
    ``forksafe.backends``'): their idle sessions would stay open, unused, until the
    arbiter exits, and then end without a goodbye.
    """
    prepare_fork()  # also finds the connections opened before, without install()
    if "django.db" in sys.modules:
        _exit.close_native_pools()


def post_fork(server: Any, worker: Any) -> None:
    """Detach every connection a new gunicorn worker inherited from the arbiter.

    gunicorn's ``post_fork(server, worker)`` hook, in the worker's main thread
    before it starts its request threads (sync, gthread and other forked
    worker classes). This is :func:`forksafe.after_fork_in_child`; with
    ``forksafe.install()`` its at-fork hook has already run and this call
    does nothing.
    """
    after_fork_in_child()


def worker_exit(server: Any, worker: Any) -> None:
    """Close every connection a gunicorn worker still holds, with a goodbye, as it exits.

    gunicorn's ``worker_exit(server, worker)`` hook, in the worker, after its
    requests ended. The calling thread's connections and Django's native pools
    are closed as at any process exit (``forksafe._exit``); under gevent, also
    those of greenlets that ended without closing theirs (a raw greenlet, one
    killed before its guard existed): no greenlet serves a request any more.
    """
    _exit.close_own_connections()
    if _green.patched() and "django.db" in sys.modules:
        _registry_close_all()


def _registry_close_all() -> None:
    """Close every connection this process opened, whichever greenlet did (the worker ends)."""
    for entry in _registry.entries():
        wrapper = entry.wrapper
        if wrapper is None or entry.pid != os.getpid() or wrapper.connection is None:
            continue
        wrapper.inc_thread_sharing()
        try:
            wrapper.close()
        except Exception:
            logger.warning("forksafe: closing %r at worker exit failed", entry.alias, exc_info=True)
        finally:
            wrapper.dec_thread_sharing()
