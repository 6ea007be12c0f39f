"""django-db-connection-pool across ``os.fork()``, in a fresh interpreter: plain vs forksafe.

    python -m tests.harness.programs.third_party_pool MODE URL HOLD   (prints one JSON object)

The parent serves a request on an alias whose ENGINE is django-db-connection-pool's
(``dj_db_conn_pool.backends.mysql`` / ``.postgresql``): a query, then Django's close, which
hands the session back to the SQLAlchemy ``QueuePool``, idle (``HOLD`` ``held``: no close,
Django's wrapper keeps the pool's proxy of it checked out). It forks; the child serves a
request, then exits normally (its interpreter finalizes, as a pool worker's would). The
parent then serves another request and disposes of its pool with a goodbye.

``MODE`` is ``plain`` or ``forksafe`` (``install()`` before ``django.setup()``). Reports the
session ids (the server's) and any error. Run by ``tests/test_third_party_pools.py``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tests.harness.forking import wait_child

ENGINES = {
    "postgresql": "dj_db_conn_pool.backends.postgresql",
    "mysql": "dj_db_conn_pool.backends.mysql",
}


def _setup(mode: str, url: str) -> None:
    from django.conf import settings

    from forksafe._urls import database_settings, select_driver, split_url

    _, driver = split_url(url)
    select_driver(driver)
    db = database_settings(url)
    vendor = "postgresql" if url.startswith("postgres") else "mysql"
    db.update(ENGINE=ENGINES[vendor], POOL_OPTIONS={"POOL_SIZE": 2, "MAX_OVERFLOW": 0})
    settings.configure(
        DATABASES={"default": db}, INSTALLED_APPS=["django.contrib.contenttypes"], USE_TZ=True
    )
    if mode == "forksafe":
        import forksafe

        forksafe.install()
    import django

    django.setup()


def _request(hold: bool = False) -> int:
    from django.db import connection

    from forksafe._sessions import backend_id

    try:
        return backend_id()
    finally:
        if not hold:
            connection.close()


def main(mode: str, url: str, hold: str) -> dict[str, Any]:
    _setup(mode, url)
    out: dict[str, Any] = {"parent": _request(hold == "held")}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then exit normally (atexit, finalization)
        os.close(read_fd)
        report: dict[str, Any] = {}
        try:
            report["session"] = _request()
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write_fd, json.dumps(report).encode())
        os.close(write_fd)
        sys.exit(0)
    os.close(write_fd)
    out["child_exit"] = wait_child(pid, timeout=60)
    with os.fdopen(read_fd) as pipe:
        out["child"] = json.loads(pipe.read() or "{}")
    try:
        out["parent_after"] = _request()
    except Exception as exc:
        out["parent_error"] = f"{type(exc).__name__}: {exc}"
    from dj_db_conn_pool.core import pool_container
    from django.db import connection

    connection.close()
    pool_container.dispose()  # the parent's own goodbye: only the child's end is measured
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
