"""gunicorn integration: server hooks for ``gunicorn.conf.py``.

gunicorn's arbiter forks its workers with :func:`os.fork`, so when the
application called :func:`forksafe.install` (with ``preload_app = True`` it
did so in the arbiter) the at-fork hooks already do the work. These hooks make
the same guarantee from the configuration file alone, for applications that do
not call ``install()``, and do no work twice when both are there: a process
that already detached what it inherited has nothing left to detach.

.. code-block:: python

    # gunicorn.conf.py
    from forksafe.gunicorn import post_fork, pre_fork  # noqa: F401

    preload_app = True
    workers = 4
"""

from __future__ import annotations

from typing import Any

from forksafe._fork import after_fork_in_child, prepare_fork

__all__ = ["post_fork", "pre_fork"]


def pre_fork(server: Any, worker: Any) -> None:
    """Close the arbiter's idle connections before gunicorn forks a worker.

    gunicorn's ``pre_fork(server, worker)`` hook, in the arbiter: with
    ``preload_app = True`` it may have queried while loading; it serves no
    request, so it keeps no idle session and the worker inherits nothing to
    detach (one with an open cursor or inside a transaction is kept).
    This is :func:`forksafe.prepare_fork` (``forksafe.install()``'s at-fork hook
    closes nothing by default: the worker detaches what it inherits either way).
    """
    prepare_fork()  # also finds the connections opened before, without install()


def post_fork(server: Any, worker: Any) -> None:
    """Detach every connection a new gunicorn worker inherited from the arbiter.

    gunicorn's ``post_fork(server, worker)`` hook, in the worker's main thread
    before it starts its request threads (sync, gthread and other forked
    worker classes). This is :func:`forksafe.after_fork_in_child`; with
    ``forksafe.install()`` its at-fork hook has already run and this call
    does nothing.
    """
    after_fork_in_child()
