"""MySQL/MariaDB (mysqlclient, PyMySQL) with forksafe's pool: ``"forksafe.backends.mysql"``."""

from __future__ import annotations

from typing import Any

from django.db.backends.mysql import base

from forksafe.backends._pooled import PooledWrapper

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(PooledWrapper, base.DatabaseWrapper):
    """Django's MySQL backend; ``OPTIONS["pool"]`` (``True`` or a dict) turns the pool on."""

    # PyMySQL stands in for MySQLdb after pymysql.install_as_MySQLdb().
    supported_drivers = {"MySQLdb": "mysqlclient", "pymysql": "PyMySQL"}

    def get_connection_params(self) -> dict[str, Any]:
        """Django's parameters, without ``pool`` (Django passes every OPTION to the driver)."""
        params: dict[str, Any] = super().get_connection_params()
        params.pop("pool", None)
        return params

    def pool_connect(self) -> Any:
        """Open a connection as Django does, with this alias's parameters."""
        params = self.get_connection_params()
        connect = base.DatabaseWrapper.get_new_connection
        return lambda: connect(self, params)

    def pool_check(self, raw: Any) -> object:
        """``COM_PING``: one round trip, no reconnect (PyMySQL reconnects by default)."""
        if self.Database.__name__ == "pymysql":
            return raw.ping(reconnect=False)
        return raw.ping()

    def pool_reset(self, raw: Any) -> bool:
        """``ROLLBACK``, always: mysqlclient does not say whether a transaction is open."""
        if not raw.open:  # closed: mysqlclient's attribute, PyMySQL's property
            return False
        raw.rollback()
        return True
