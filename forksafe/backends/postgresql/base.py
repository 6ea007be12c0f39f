"""PostgreSQL (psycopg2) with forksafe's pool: ``ENGINE = "forksafe.backends.postgresql"``.

With psycopg 3 this is Django's backend unchanged: ``OPTIONS["pool"]`` gives
Django's native pool (psycopg_pool), which forksafe already detaches at fork
and closes at exit.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from forksafe import _pool, _tasks
from forksafe.backends._pooled import PooledWrapper

__all__ = ["DatabaseWrapper"]

_PSYCOPG3: bool = getattr(base, "is_psycopg3")  # noqa: B009  (not in django-stubs)

# psycopg2.extensions.TRANSACTION_STATUS_*: the client's view, no round trip.
_IDLE, _INTRANS = 0, 2


class DatabaseWrapper(PooledWrapper, base.DatabaseWrapper):
    """Django's PostgreSQL backend; with psycopg2, ``OPTIONS["pool"]`` is forksafe's pool."""

    supported_drivers = {"psycopg2": "psycopg2"}

    @property
    def pool(self) -> Any:
        """Django's native pool with psycopg 3, forksafe's with psycopg2."""
        if _PSYCOPG3:
            return base.DatabaseWrapper.pool.fget(self)  # type: ignore[attr-defined]
        return PooledWrapper.pool.fget(self)  # type: ignore[attr-defined]

    def get_connection_params(self) -> dict[str, Any]:
        """Django's parameters, without ``pool``, which Django refuses without psycopg 3."""
        if _PSYCOPG3 or not self.settings_dict["OPTIONS"].get("pool"):
            return super().get_connection_params()
        # Django raises "Database pooling requires psycopg >= 3" on seeing it:
        # https://github.com/django/django/blob/stable/5.2.x/django/db/backends/postgresql/base.py
        settings_dict = self.settings_dict
        options = {k: v for k, v in settings_dict["OPTIONS"].items() if k != "pool"}
        self.settings_dict = {**settings_dict, "OPTIONS": options}
        try:
            return super().get_connection_params()
        finally:
            self.settings_dict = settings_dict

    def get_new_connection(self, conn_params: Any) -> Any:
        """Django's, which checks out of ``self.pool`` (``open()``, ``getconn()``) if any."""
        raw = base.DatabaseWrapper.get_new_connection(self, conn_params)
        if not _PSYCOPG3 and isinstance(self.pool, _pool.ConnectionPool):
            # As PooledWrapper.checkout(): _close() discards a connection left mid-protocol.
            _tasks.watch(self)
        return raw

    def _close(self) -> None:
        if _PSYCOPG3:
            base.DatabaseWrapper._close(self)  # type: ignore[attr-defined]
            return
        PooledWrapper._close(self)

    def close_pool(self) -> None:
        """Close this alias's pool: Django's with psycopg 3, forksafe's with psycopg2."""
        if _PSYCOPG3:
            base.DatabaseWrapper.close_pool(self)
            return
        PooledWrapper.close_pool(self)

    def pool_connect(self) -> Any:
        """Open a connection with this alias's parameters and configure it once.

        What Django's native pool does with ``configure=``: the time zone and
        role are set when the connection opens, not at each checkout
        (``init_connection_state`` skips them when there is a pool).
        """
        params = self.get_connection_params()
        database = self.Database
        configure = self._configure_connection  # type: ignore[attr-defined]

        def connect() -> Any:
            raw = database.connect(**params)
            if configure(raw):
                raw.commit()
            return raw

        return connect

    def pool_check(self, raw: Any) -> object:
        """``SELECT 1``, rolled back when it opened a transaction."""
        with raw.cursor() as cursor:
            cursor.execute("SELECT 1")
        if raw.info.transaction_status == _INTRANS:
            raw.rollback()
        return True

    def pool_reset(self, raw: Any) -> bool:
        """Roll back an open transaction; ``False`` when failed, mid-query, unknown or closed."""
        if raw.closed:
            return False
        status = raw.info.transaction_status
        if status == _INTRANS:
            raw.rollback()
            status = raw.info.transaction_status
        return bool(status == _IDLE)
