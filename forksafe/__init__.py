"""forksafe: Django database connections that survive threads, fork and pre-forking servers.

The public surface is small on purpose; everything else lives in private modules.

* :func:`install` -- register the fork hooks and track every connection (call it early).
* :func:`prepare_fork` / :func:`after_fork_in_child` -- the two halves of the
  hooks, for code that forks without Python's ``os.register_at_fork`` (uWSGI).
* :func:`Pool`, :class:`Process`, :class:`ProcessPoolExecutor`, :func:`get_context` --
  process pools whose workers get sessions of their own and close them when they exit,
  under every start method, for ``multiprocessing`` and ``multiprocess``.
* :class:`Thread`, :class:`ThreadPoolExecutor`, :func:`closing_connections` -- threads
  that close their own connections when they end (``forksafe.threads``).
* :func:`stats` -- this process's connections per alias: opened, open, closed, detached.
* :class:`ForkSafeWarning` -- emitted when something is left as it is on purpose.
* ``__version__``.

Integrations with a server or worker live in their own modules: ``forksafe.uwsgi``,
``forksafe.gunicorn``, ``forksafe.asgi`` (the event loop's executor, ASGI lifespan),
``forksafe.rq`` and ``forksafe.celery`` (task queues, imported explicitly: they need their
library); the Django app is ``"forksafe"`` in ``INSTALLED_APPS``.
"""

from __future__ import annotations

from forksafe._fork import after_fork_in_child, prepare_fork, stats
from forksafe._install import install
from forksafe._warnings import ForkSafeWarning
from forksafe.pools import Pool, Process, ProcessPoolExecutor, get_context
from forksafe.threads import Thread, ThreadPoolExecutor, closing_connections

__version__ = "0.1.0.dev0"

__all__ = [
    "ForkSafeWarning",
    "Pool",
    "Process",
    "ProcessPoolExecutor",
    "Thread",
    "ThreadPoolExecutor",
    "__version__",
    "after_fork_in_child",
    "closing_connections",
    "get_context",
    "install",
    "prepare_fork",
    "stats",
]
