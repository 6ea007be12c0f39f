"""A connection pool that survives fork: the core of ``forksafe.backends``.

One :class:`ConnectionPool` per alias per process, kept in :data:`POOLS` (the
place ``_drivers.native_pools()`` looks, beside Django's own psycopg pools), so
that the fork reset detaches a child's inherited pools with no network I/O and
the exit paths close a process's own pools with a goodbye, exactly as they do
for Django's native pools.

Driver-agnostic: a backend gives the pool three callables -- ``connect`` (open
and configure one connection), ``check`` (a round trip: is it alive?) and
``reset`` (make a returned connection clean, or say it cannot be). There is no
background thread: expiry (``max_idle``, ``max_lifetime``) is applied at
checkout and return, so a forked child has no pool thread to miss.

Fork: the pool's lock may be held by another thread of the parent at fork time.
A child never takes it: the reset detaches the parent's idle connections by
reading :attr:`ConnectionPool._pool` and drops the pool from :data:`POOLS`, and
every entry point here compares the pool's pid with the caller's first.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from forksafe import _drivers

logger = logging.getLogger("forksafe")

__all__ = ["POOLS", "ConnectionPool", "PoolOptions", "parse_options"]


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """What ``OPTIONS["pool"]`` may say; ``True`` means all the defaults."""

    #: Idle connections kept open however long they wait (``max_idle`` closes the rest).
    min_size: int = 0
    #: Connections of this alias in this process at most (idle and checked out).
    max_size: int = 10
    #: Seconds a checkout waits for a connection when ``max_size`` are checked out.
    timeout: float = 30.0
    #: Seconds an idle connection above ``min_size`` is kept before it is closed.
    max_idle: float = 600.0
    #: Seconds after which a connection is closed on its return (and not handed out).
    max_lifetime: float = 3600.0
    #: Seconds idle after which a checkout pings the connection first (0: every checkout).
    check_after: float = 30.0


_SIZES = ("min_size", "max_size")
_FIELDS = tuple(field.name for field in dataclasses.fields(PoolOptions))


def parse_options(alias: str, value: object) -> PoolOptions:
    """Check ``OPTIONS["pool"]`` of ``alias``: ``True`` or a dict of :class:`PoolOptions` fields."""
    from django.core.exceptions import ImproperlyConfigured

    valid = ", ".join(_FIELDS)
    if value is True:
        return PoolOptions()
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] must be True or a dict with some of:"
            f" {valid}; got {value!r}"
        )
    unknown = sorted(str(key) for key in value if key not in _FIELDS)
    if unknown:
        raise ImproperlyConfigured(
            f"unknown pool option(s) {', '.join(unknown)} in DATABASES[{alias!r}]['OPTIONS']"
            f"['pool']; valid options: {valid}"
        )
    for name, option in value.items():
        # bool is an int to Python, never a size or a number of seconds here.
        wanted: tuple[type, ...] = (int,) if name in _SIZES else (int, float)
        if isinstance(option, bool) or not isinstance(option, wanted):
            raise ImproperlyConfigured(
                f"pool option {name!r} of DATABASES[{alias!r}] must be"
                f" {'an int' if name in _SIZES else 'a number of seconds'}, got {option!r};"
                f" valid options: {valid}"
            )
    options = PoolOptions(**value)
    problem = None
    if options.max_size < 1 or options.min_size < 0:
        problem = "max_size must be at least 1 and min_size at least 0"
    elif options.min_size > options.max_size:
        problem = f"min_size ({options.min_size}) is above max_size ({options.max_size})"
    elif min(options.timeout, options.max_idle, options.max_lifetime) <= 0:
        problem = "timeout, max_idle and max_lifetime must be positive"
    elif options.check_after < 0:
        problem = "check_after must be 0 (every checkout) or more"
    if problem:
        raise ImproperlyConfigured(
            f"pool options of DATABASES[{alias!r}]: {problem}; valid options: {valid}"
        )
    return options


class ConnectionPool:
    """The connections of one alias in one process: checked out, returned, reused."""

    def __init__(
        self,
        alias: str,
        options: PoolOptions,
        *,
        connect: Callable[[], Any],
        check: Callable[[Any], object],
        reset: Callable[[Any], bool],
    ) -> None:
        self.alias = alias
        self.options = options
        self.pid = os.getpid()
        self._connect = connect
        self._check = check
        self._reset = reset
        self._cond = threading.Condition(threading.Lock())
        # Idle raw connections, the most recently returned last (handed out first, so
        # that the others grow idle and max_idle can close them). _drivers reads it in
        # a forked child (the name and shape psycopg_pool's pools have, too).
        self._pool: collections.deque[Any] = collections.deque()
        self._closed = False  # _drivers sets it on a pool it detached
        self._born: dict[int, float] = {}  # id(raw) -> when opened: every connection of the pool
        self._idle_since: dict[int, float] = {}  # id(raw) -> when returned: idle ones
        self._size = 0  # open or being opened
        self.waits = 0  # checkouts that had to wait
        self.timeouts = 0  # checkouts that gave up

    def open(self) -> None:
        """Do nothing: the pool opens connections on demand (Django's code calls it)."""

    def stats(self) -> dict[str, int]:
        """``size``, ``idle``, ``in_use``, ``max_size``, ``waits`` and ``timeouts``, now."""
        with self._cond:
            idle = len(self._pool)
            return {
                "size": self._size,
                "idle": idle,
                "in_use": self._size - idle,
                "max_size": self.options.max_size,
                "waits": self.waits,
                "timeouts": self.timeouts,
            }

    def owns(self, raw: Any) -> bool:
        """Whether ``raw`` was opened by this pool and is not closed yet."""
        return id(raw) in self._born

    def getconn(self) -> Any:
        """Check out a connection: an idle one (checked if it idled long), or a new one.

        Waits up to ``timeout`` seconds when ``max_size`` are checked out, then
        raises Django's ``OperationalError`` naming the alias and the counts.
        """
        self._same_process()
        deadline: float | None = None
        while True:
            expired: list[Any] = []
            with self._cond:
                while True:
                    if self._closed:
                        raise _error(f"the connection pool of {self.alias!r} is closed")
                    now = time.monotonic()
                    expired += self._take_expired(now)
                    if self._pool or self._size < self.options.max_size:
                        break
                    if deadline is None:
                        deadline = now + self.options.timeout
                        self.waits += 1
                    if now >= deadline:
                        self.timeouts += 1
                        raise _error(
                            f"no connection of database alias {self.alias!r} became free in"
                            f" {self.options.timeout:g} s: all {self._size} are checked out"
                            f" (max_size={self.options.max_size}); raise max_size or return"
                            " connections sooner (close them, end the request or thread)"
                        )
                    self._cond.wait(deadline - now)
                raw = self._pool.pop() if self._pool else None
                if raw is None:
                    self._size += 1  # a slot reserved: the connect happens outside the lock
                else:
                    idle_for = now - self._idle_since.pop(id(raw))
            self._close_all(expired)
            if raw is None:
                return self._open()
            if self._alive(raw, idle_for):
                return raw
            logger.info("forksafe: a pooled connection of %r was dead; it is replaced", self.alias)
            self._drop(raw)

    def putconn(self, raw: Any, *, reusable: bool = True) -> None:
        """Return ``raw``: reset and kept if it can be, closed otherwise (``reusable=False``)."""
        if os.getpid() != self.pid:
            return  # the fork reset detached it: never touched here
        born = self._born.get(id(raw))
        if born is None:  # not (or no longer) ours
            _close_quietly(raw)
            return
        keep = reusable and not self._closed
        keep = keep and time.monotonic() - born < self.options.max_lifetime
        if keep:
            try:
                keep = bool(self._reset(raw))
            except Exception:
                logger.debug("forksafe: resetting a returned connection failed", exc_info=True)
                keep = False
        with self._cond:
            if keep and not self._closed:
                self._idle_since[id(raw)] = time.monotonic()
                self._pool.append(raw)
                self._cond.notify()
                return
        self._drop(raw)

    def close(self) -> None:
        """Close the idle connections (a goodbye each); checked-out ones close on return."""
        if os.getpid() != self.pid:
            return
        with self._cond:
            self._closed = True
            idle = list(self._pool)
            self._pool.clear()
            for raw in idle:
                self._forget(raw)
            self._cond.notify_all()
        self._close_all(idle)

    def _same_process(self) -> None:
        if os.getpid() != self.pid:
            # The fork reset drops inherited pools from POOLS; one kept by a reference
            # from the parent must not hand out the parent's sessions.
            raise _error(f"the connection pool of {self.alias!r} belongs to process {self.pid}")

    def _take_expired(self, now: float) -> list[Any]:
        """Idle connections past ``max_idle`` (above ``min_size``), oldest first; under the lock."""
        expired = []
        while (
            self._pool
            and self._size > self.options.min_size
            and now - self._idle_since[id(self._pool[0])] > self.options.max_idle
        ):
            raw = self._pool.popleft()
            self._forget(raw)
            expired.append(raw)
        return expired

    def _forget(self, raw: Any) -> None:
        """Stop counting ``raw``; under the lock."""
        self._born.pop(id(raw), None)
        self._idle_since.pop(id(raw), None)
        self._size -= 1

    def _open(self) -> Any:
        try:
            raw = self._connect()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._born[id(raw)] = time.monotonic()
        return raw

    def _alive(self, raw: Any, idle_for: float) -> bool:
        """Whether an idle connection may be handed out: a ping when it idled long or has news."""
        if time.monotonic() - self._born[id(raw)] >= self.options.max_lifetime:
            return False
        if idle_for < self.options.check_after and not _has_news(raw):
            return True
        try:
            self._check(raw)
        except Exception:
            return False
        return True

    def _drop(self, raw: Any) -> None:
        with self._cond:
            if id(raw) in self._born:
                self._forget(raw)
            self._cond.notify()
        _close_quietly(raw)

    def _close_all(self, raws: list[Any]) -> None:
        for raw in raws:
            _close_quietly(raw)


#: This process's pools by alias (forksafe.backends); ``_drivers.native_pools()`` reads it.
POOLS: dict[str, ConnectionPool] = {}


def _has_news(raw: Any) -> bool:
    """Whether an idle connection's socket is readable: the server said something, or hung up.

    An idle session gets nothing unasked; a terminated one gets an error and
    end-of-file (PostgreSQL's ``pg_terminate_backend``, MariaDB's ``KILL``, a
    restart). Readable is a reason for a ping, not a verdict: a TLS record may
    be pending too. No byte is read or sent.
    """
    reader = _drivers.socket_reader(raw, _drivers.driver_of(raw))
    if reader is None:
        return False
    try:
        poller = select.poll()
        poller.register(reader(), select.POLLIN)
        return bool(poller.poll(0))
    except Exception:
        return True


def _close_quietly(raw: Any) -> None:
    try:
        raw.close()
    except Exception:
        logger.debug("forksafe: closing a pooled connection failed", exc_info=True)


def _error(message: str) -> Exception:
    from django.db import OperationalError

    return OperationalError(f"forksafe: {message}")
