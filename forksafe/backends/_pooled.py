"""What both pooled backends share: the pool of an alias, checkout, return, close."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from forksafe import _drivers, _pool, _tasks

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    _Base = BaseDatabaseWrapper
else:
    _Base = object

__all__ = ["PooledWrapper"]


class PooledWrapper(_Base):
    """Mixin before Django's ``DatabaseWrapper``: ``OPTIONS["pool"]`` gives forksafe's pool.

    A subclass names its drivers (``supported_drivers``) and says how to open,
    check and reset one raw connection (:meth:`pool_connect`,
    :meth:`pool_check`, :meth:`pool_reset`).
    """

    #: The DB-API module names the pool works with, and how users know them.
    supported_drivers: ClassVar[dict[str, str]] = {}
    Database: ClassVar[Any]  # the DB-API module: Django's backend sets it

    @property
    def pool(self) -> _pool.ConnectionPool | None:
        """This alias's pool in this process (made on first use), or ``None`` without one."""
        from django.db.backends.base.base import NO_DB_ALIAS

        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not options:
            return None
        pool = _pool.POOLS.get(self.alias)
        if pool is not None and pool.pid == os.getpid():
            return pool
        if pool is not None:
            # Inherited, and no fork hook dropped it (forksafe not installed in time):
            # detach it now, without I/O, like the fork reset does.
            _drivers.detach_native_pools()
        return _pool.POOLS.setdefault(self.alias, self._new_pool(options))

    def _new_pool(self, options: object) -> _pool.ConnectionPool:
        from django.core.exceptions import ImproperlyConfigured

        parsed = _pool.parse_options(self.alias, options)
        driver = self.Database.__name__.partition(".")[0]
        if driver not in self.supported_drivers:
            raise ImproperlyConfigured(
                f"forksafe's pool of DATABASES[{self.alias!r}] supports"
                f" {' and '.join(self.supported_drivers.values())}; this backend uses"
                f" {driver!r}"
            )
        if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
            # What Django's native pool says too: the pool replaces persistent connections.
            raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
        return _pool.ConnectionPool(
            self.alias,
            parsed,
            connect=self.pool_connect(),
            check=self.pool_check,
            reset=self.pool_reset,
        )

    def pool_connect(self) -> Any:
        """A callable that opens one configured raw connection for the pool."""
        raise NotImplementedError

    def pool_check(self, raw: Any) -> object:
        """Make a round trip on ``raw``; raise if it is dead."""
        raise NotImplementedError

    def pool_reset(self, raw: Any) -> bool:
        """Roll ``raw`` back for its next user; ``False`` if it cannot be reused."""
        raise NotImplementedError

    def get_new_connection(self, conn_params: Any) -> Any:
        """Check a connection out of the pool, or connect when there is none."""
        pool = self.pool
        if pool is None:
            return super().get_new_connection(conn_params)
        return self.checkout(pool)

    def checkout(self, pool: _pool.ConnectionPool) -> Any:
        """Check a connection out of ``pool``, watched for interrupted queries."""
        raw = pool.getconn()
        # A query interrupted by a non-database error may leave the connection
        # mid-protocol: _tasks flags the wrapper, and _close() then discards it.
        _tasks.watch(self)
        return raw

    def _close(self) -> None:
        """Return the connection to its pool (after a rollback), or discard it."""
        pool = _pool.POOLS.get(self.alias)
        raw = self.connection
        if raw is None or pool is None or not pool.owns(raw):
            super()._close()  # type: ignore[misc]
            return
        interrupted = _tasks.take_interrupted(self)
        self.connection = None  # Django's native pool does the same: the wrapper is done with it
        with self.wrap_database_errors:
            pool.putconn(raw, reusable=not interrupted)

    def close_pool(self) -> None:
        """Close this alias's pool (Django's method of the same name on its native pool)."""
        pool = _pool.POOLS.pop(self.alias, None)
        if pool is not None:
            pool.close()

    def close_if_health_check_failed(self) -> None:
        """Skip the check with a pool: checkout checks (Django's native pool does the same)."""
        if self.pool:
            return
        super().close_if_health_check_failed()
