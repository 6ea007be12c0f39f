"""The second line of defence: a connection used in a process that did not open it.

The fork hooks make a child's inherited sockets harmless before any of its code runs,
and this check finishes the child's reset before its first use of a connection --
when the hooks run. Some
forks run no Python hook at all: uWSGI without ``master`` forks its workers in C,
so do C extensions and embedding servers (mod_wsgi daemon processes); an
``install()`` called after the fork, or an ``os.register_at_fork`` hook registered
before forksafe's that uses a connection, come too late or too early. The child
then holds the parent's connections untouched, and its first query goes over the
parent's session.

So Django's wrapper checks, before each use, that its connection was opened by this
process. SQLAlchemy recommends the same pid check on pool checkout
(https://docs.sqlalchemy.org/en/20/core/pooling.html#using-connection-pools-with-multiprocessing-or-os-fork);
psycopg compares the pid only when a connection is deallocated. A mismatch runs the
child reset (no network I/O), logs a WARNING naming the path that bypassed the hooks,
and the wrapper connects afresh, once per connection.

Why Django is patched: no documented Django API runs before a connection is used.
``connection_created`` fires only on connect; ``connection.execute_wrapper()`` is a
per-wrapper context manager around ``execute()``, after ``ensure_connection()``, and
does not see ``set_autocommit()``, ``commit()`` or ``close()``; ``request_started``
exists only in a request cycle. Four methods of ``BaseDatabaseWrapper`` are wrapped,
once (idempotent), in :func:`install`; the originals stay reachable as
``__forksafe_original__``. What it relies on, the same in Django 4.2, 5.2 and 6.1
(``django/db/backends/base/base.py``: ``ensure_connection`` at lines 284 / 271 / 271,
``_cursor`` 303 / 294 / 294, ``commit`` 332 / 323 / 323, ``rollback`` 342 / 333 / 333,
``close`` 353 / 344 / 344, ``get_autocommit`` 461 / 452 / 452, ``set_autocommit``
466 / 457 / 457; ``sqlite3/base.py`` ``close`` 193 / 222 / 221):

* ``ensure_connection()`` is defined only in ``BaseDatabaseWrapper`` and every path
  that talks to the server through the wrapper goes through it first: ``_cursor()``
  (so ``cursor()`` and ``chunked_cursor()``), ``get_autocommit()``,
  ``set_autocommit()`` (so ``atomic()``), savepoints, ``close_if_unusable_or_obsolete()``
  (via ``get_autocommit()``, at every request start) -- all but two:
* ``commit()`` and ``rollback()``, defined only in ``BaseDatabaseWrapper`` (backends
  override ``_commit()`` / ``_rollback()``), reach the driver without
  ``ensure_connection()``: leaving ``atomic()``, or ``transaction.commit()`` with
  autocommit off, in a child that has not queried yet;
* ``close()`` is defined in ``BaseDatabaseWrapper``; the SQLite and Oracle backends
  override it and call ``BaseDatabaseWrapper.close(self)`` / ``super().close()``, the
  PostgreSQL backend overrides only ``_close()``, which ``close()`` calls. ``close()``
  is the other way a child reaches the shared socket before any query
  (``connections.close_all()``, the well-known advice, sends the driver's goodbye).

The first check in a forked child also finishes the reset that its fork hook left
for later (``forksafe._fork.finish_reset``), whichever wrapper it is made for.

Cost: one comparison per use. ``os.getpid()`` is a system call (glibc stopped caching
it in 2.25; ~180 ns measured here) and a pid cached by an at-fork hook cannot see the
forks this defends against, so the current pid comes from a page the kernel zeroes in
every child (``MADV_WIPEONFORK``, Linux 4.14+): reading one byte tells whether this
process forked since the pid was last read. Elsewhere ``os.getpid()`` is called.
``benchmarks/guard_bench.py`` measures the cost per cursor.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from forksafe import _fork, _registry
from forksafe._registry import PID_ATTRIBUTE

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["current_pid", "install"]

# Linux's value; Python's mmap module exposes it only when built with recent headers.
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)


def _wipe_on_fork_page() -> mmap.mmap | None:
    """A private page whose first byte is 1 here and 0 in every child, or ``None``."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MAP_ANONYMOUS"):
        return None
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        page.madvise(_MADV_WIPEONFORK)  # EINVAL before Linux 4.14
    except (OSError, AttributeError, ValueError):
        page.close()
        return None
    page[0] = 1
    return page


_flag = _wipe_on_fork_page()
_pid = os.getpid()


def current_pid() -> int:
    """This process's pid, without a system call where the kernel allows it."""
    if _flag is None or not _flag[0]:
        _first_use_here()
    return _pid


def _first_use_here() -> None:
    """The first check in this process (or, without the page, any check): update the pid.

    In a forked child, the reset that its fork hook left for later is finished
    here, before the first use of any connection -- also of one the parent
    never opened, whose first connect sends ``connection_created``.
    """
    global _pid
    pid = os.getpid()
    if _flag is not None:
        _flag[0] = 1  # this process's page: children get theirs zeroed again
    elif pid == _pid:
        return
    _pid = pid
    _fork.finish_reset()


def _opened_elsewhere(wrapper: BaseDatabaseWrapper) -> bool:
    """Whether ``wrapper`` holds a connection that another process opened."""
    opened_by: int | None = getattr(wrapper, PID_ATTRIBUTE)
    return opened_by != current_pid()


def _on_foreign_use(wrapper: BaseDatabaseWrapper) -> None:
    _fork.detach_on_first_use(wrapper)
    if wrapper.connection is not None:
        # Whatever it holds now is this process's own.
        wrapper.__dict__[PID_ATTRIBUTE] = current_pid()


def _guarded_use(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a method that reaches the connection: ensure_connection, commit, rollback."""

    def guarded(self: BaseDatabaseWrapper) -> Any:
        # current_pid() and _opened_elsewhere(), inlined: this runs before every cursor.
        if _flag is None or not _flag[0]:
            _first_use_here()
        if self.connection is not None and self._forksafe_pid != _pid:  # type: ignore[attr-defined]
            _on_foreign_use(self)
        return original(self)

    return guarded


def _guarded_close(original: Callable[..., Any]) -> Callable[..., Any]:
    def close(self: BaseDatabaseWrapper) -> Any:
        if self.connection is not None and _opened_elsewhere(self):
            _on_foreign_use(self)
        try:
            return original(self)
        finally:
            if self.connection is None:
                # The registry must not keep a closed connection alive until the
                # wrapper is collected (PyMySQL: an SSL context per connection).
                _registry.closed(self)

    return close


_GUARDS = {
    "ensure_connection": _guarded_use,
    "commit": _guarded_use,
    "rollback": _guarded_use,
    "close": _guarded_close,
}


def install() -> None:
    """Wrap Django's wrapper methods that reach the connection in the pid check, once.

    ``BaseDatabaseWrapper.ensure_connection``, ``commit``, ``rollback`` and ``close``.
    """
    from django.db.backends.base.base import BaseDatabaseWrapper

    # None: "not known" for a wrapper the registry never saw connect; its first use
    # takes the slow path once, which adopts it (the registry records every
    # connection opened after install(), and those found open when it started).
    if PID_ATTRIBUTE not in BaseDatabaseWrapper.__dict__:
        setattr(BaseDatabaseWrapper, PID_ATTRIBUTE, None)
    for name, guard in _GUARDS.items():
        current = BaseDatabaseWrapper.__dict__[name]
        if hasattr(current, "__forksafe_original__"):
            continue
        wrapped = guard(current)
        wrapped.__name__ = current.__name__
        wrapped.__qualname__ = current.__qualname__
        wrapped.__doc__ = current.__doc__
        wrapped.__forksafe_original__ = current  # type: ignore[attr-defined]
        setattr(BaseDatabaseWrapper, name, wrapped)
