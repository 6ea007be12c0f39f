"""Fork inside a transaction, in a fresh interpreter: plain Django vs forksafe.

    python -m tests.harness.programs.transaction_fork SCENARIO MODE URL   (prints one JSON object)

``autocommit_off``: ``set_autocommit(False)``, insert a row, fork. The child
counts the rows it can see, inserts and commits a row of its own; before the
parent commits, a separate session looks for the parent's row.

``sqlite_write``: an SQLite parent inside ``transaction.atomic()`` with a row
written (the write lock and the rollback journal are held) forks a child that
exits normally -- ``sys.exit()`` unwinds the ``atomic`` block and the
interpreter finalizes; then the parent writes again and commits.

``MODE`` is ``plain`` or ``forksafe`` (``install()`` before ``django.setup()``).
Run by ``tests/test_fork.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import warnings
from typing import Any

from tests.harness.forking import wait_child

TABLE = "forksafe_fork_rows"


def _setup(mode: str, url: str) -> None:
    from forksafe._urls import configure_django

    configure_django(url)
    if mode == "forksafe":
        import forksafe

        forksafe.install()
    import django

    django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (name varchar(40))")
        cursor.execute(f"DELETE FROM {TABLE}")


def _names(conn: Any) -> list[str]:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT name FROM {TABLE} ORDER BY name")
        return [str(row[0]) for row in cursor.fetchall()]


def _insert(conn: Any, name: str) -> None:
    with conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (name) VALUES (%s)", [name])


def autocommit_off(mode: str, url: str) -> dict[str, Any]:
    _setup(mode, url)
    from django.db import connection, connections, transaction

    out: dict[str, Any] = {}
    transaction.set_autocommit(False)
    _insert(connection, "parent")
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pid = os.fork()
    if pid == 0:  # the child
        report: dict[str, Any] = {}
        try:
            report["seen"] = _names(connection)
            _insert(connection, "child")
            transaction.commit()
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write_fd, json.dumps(report).encode())
        os._exit(0)  # sends nothing, in either mode: only the commit is under test
    os.close(write_fd)
    wait_child(pid)
    with os.fdopen(read_fd) as pipe:
        out["child"] = json.loads(pipe.read() or "{}")
    out["warnings"] = [str(w.message) for w in caught]
    observer = connections.create_connection("default")
    out["visible_before_commit"] = _names(observer)
    try:
        transaction.commit()
        out["commit_error"] = None
    except Exception as exc:
        out["commit_error"] = f"{type(exc).__name__}: {exc}"
    out["rows"] = _names(observer)
    with observer.cursor() as cursor:
        cursor.execute(f"DROP TABLE {TABLE}")
    observer.close()
    connections.close_all()
    return out


def sqlite_write(mode: str, url: str) -> dict[str, Any]:
    _setup(mode, url)
    from django.db import connection, transaction

    out: dict[str, Any] = {"commit_error": None}
    try:
        with warnings.catch_warnings(record=True), transaction.atomic():
            warnings.simplefilter("always")
            _insert(connection, "before fork")
            pid = os.fork()
            if pid == 0:  # the child: a normal exit, through the atomic block
                sys.exit(0)
            out["child_exit"] = wait_child(pid)
            _insert(connection, "after fork")
    except Exception as exc:
        out["commit_error"] = f"{type(exc).__name__}: {exc}"
    connection.close()
    path = url.partition(":///")[2]
    db = sqlite3.connect(path)
    try:
        out["rows"] = sorted(str(row[0]) for row in db.execute(f"SELECT name FROM {TABLE}"))
        out["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    return out


if __name__ == "__main__":
    scenario, mode, url = sys.argv[1:4]
    print(
        json.dumps(
            {"autocommit_off": autocommit_off, "sqlite_write": sqlite_write}[scenario](mode, url)
        )
    )
