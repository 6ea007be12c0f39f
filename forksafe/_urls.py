"""Database URLs: ``postgresql+psycopg2://user@host/db`` to Django settings.

Used by ``forksafe demo`` and by the test settings, benchmarks and example
project. SQLite URLs are parsed here; server URLs need ``dj-database-url``
(``pip install 'forksafe[demo]'``).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import unquote

__all__ = ["configure_django", "database_settings", "select_driver", "split_url"]

_DRIVERS = {
    "postgresql": ("psycopg", "psycopg2"),
    "mysql": ("mysqlclient", "pymysql"),
    "sqlite": ("sqlite3",),
}
_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql", "mariadb": "mysql"}


def split_url(url: str) -> tuple[str, str]:
    """Split ``postgresql+psycopg2://...`` into (``postgresql://...``, ``psycopg2``).

    Without ``+driver``: PostgreSQL uses psycopg 3 (as Django prefers it),
    MySQL/MariaDB mysqlclient, SQLite sqlite3.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"not a database URL: {url!r}; expected e.g. postgresql://user@host/db,"
            " mysql://root@127.0.0.1/test or sqlite:////tmp/db.sqlite3"
        )
    base, _, driver = scheme.partition("+")
    base = _ALIASES.get(base, base)
    if base not in _DRIVERS:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use postgresql://, mysql://"
            " (or mariadb://) or sqlite://, optionally with +psycopg2 or +pymysql"
        )
    drivers = _DRIVERS[base]
    driver = driver or drivers[0]
    if driver not in drivers:
        raise ValueError(
            f"unknown driver {driver!r} for {base}://; choose one of: {', '.join(drivers)}"
        )
    return f"{base}://{rest}", driver


def select_driver(driver: str) -> None:
    """Make Django's backend use ``driver``; call before Django imports its backend."""
    if driver == "psycopg2":
        # Django prefers psycopg 3 when it can import it.
        sys.modules["psycopg"] = None  # type: ignore[assignment]
    elif driver == "pymysql":
        import pymysql

        pymysql.install_as_MySQLdb()


def database_settings(url: str, **options: Any) -> dict[str, Any]:
    """Return a ``DATABASES`` entry for ``url`` (driver suffix removed), updated by ``options``."""
    plain, _ = split_url(url)
    config: dict[str, Any]
    if plain.startswith("sqlite://"):
        # sqlite:////abs/path, sqlite:///relative/path, sqlite:// or sqlite://:memory:
        path = unquote(plain.removeprefix("sqlite://").partition("?")[0])
        name = path[1:] if path.startswith("/") else path
        config = {"ENGINE": "django.db.backends.sqlite3", "NAME": name or ":memory:"}
    else:
        try:
            import dj_database_url
        except ImportError as exc:
            raise ImportError(
                f"{plain.partition(':')[0]}:// database URLs need dj-database-url, which is"
                " not installed: pip install 'forksafe[demo]' (SQLite URLs work without it)"
            ) from exc
        config = dict(dj_database_url.parse(plain))
    config.update(options)
    return config


def configure_django(url: str, *, pool: bool = False) -> str:
    """Call ``settings.configure()`` for one database at ``url``; return the driver."""
    from django.conf import settings

    _, driver = split_url(url)
    select_driver(driver)
    db = database_settings(url)
    if pool:
        db.setdefault("OPTIONS", {})["pool"] = {"min_size": 2, "max_size": 4}
    settings.configure(
        DATABASES={"default": db},
        INSTALLED_APPS=["django.contrib.contenttypes"],
        USE_TZ=True,
    )
    return driver
