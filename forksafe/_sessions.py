"""What the database server says about its sessions and limits: one query per vendor.

Used by the demo, the tests and benchmarks (session ids and counts, abandoned
sessions), ``forksafe doctor`` (sessions by client and state, ``max_connections``)
and ``forksafe.testing`` (which local process holds a leaked session). Every
function but :func:`backend_id` opens a connection of its own, closes it, and
leaves that session out of what it returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Session",
    "abandoned_sessions",
    "backend_id",
    "count_sessions",
    "list_sessions",
    "max_connections",
    "own_connection",
    "quiet_sessions",
    "session_groups",
    "settle_sessions",
]

_SQL = {
    "postgresql": (
        "SELECT pid, host(client_addr), client_port, state FROM pg_stat_activity"
        " WHERE datname = current_database() AND backend_type = 'client backend'"
        " AND pid <> pg_backend_pid()"
    ),
    # PROCESSLIST has HOST as "host:port" and the command where PostgreSQL has a state.
    "mysql": (
        "SELECT ID, HOST, NULL, COMMAND FROM information_schema.PROCESSLIST"
        " WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
    ),
}


@dataclass(frozen=True)
class Session:
    """One client session of the database, as the server sees it."""

    id: int
    host: str  # client address; "local" for a Unix socket
    port: int | None  # client port
    state: str


def own_connection(alias: str = "default") -> Any:
    """A new wrapper for ``alias`` that is nobody else's and never uses a native pool.

    Opening a pooled alias would open (and keep) the pool's ``min_size`` sessions
    just to look at the server; this wrapper connects directly. Close it yourself.
    """
    from django.db import connections

    conn = connections.create_connection(alias)
    options = conn.settings_dict.get("OPTIONS")
    if isinstance(options, dict) and options.get("pool"):
        options = {k: v for k, v in options.items() if k != "pool"}
        conn.settings_dict = {**conn.settings_dict, "OPTIONS": options}
    return conn


def list_sessions(alias: str = "default") -> list[Session] | None:
    """The other client sessions on ``alias``'s database now; ``None`` for SQLite."""
    conn = own_connection(alias)
    try:
        sql = _SQL.get(conn.vendor)
        if sql is None:
            return None
        with conn.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
    finally:
        conn.close()
    sessions = []
    for session_id, client, port, state in rows:
        host = str(client or "local")
        if port is None:  # MySQL: "host:port"
            head, sep, tail = host.rpartition(":")
            if sep and tail.isdigit():
                host, port = head.strip("[]"), int(tail)
        sessions.append(
            Session(int(session_id), host, int(port) if port else None, str(state or "unknown"))
        )
    return sessions


def _scalar(conn: Any, sql: dict[str, str]) -> Any:
    """Run ``sql[conn.vendor]`` and return the value in its one row.

    The value is the last column: a MySQL ``SHOW ... LIKE`` row is (name, value).
    Other vendors (SQLite) run ``SELECT 1`` -- so an unreachable database
    still raises -- and get None.
    """
    query = sql.get(conn.vendor)
    with conn.cursor() as cursor:
        cursor.execute(query or "SELECT 1")
        row = cursor.fetchone()
    assert row is not None, query
    return None if query is None else row[-1]


def _ask_server(alias: str, sql: dict[str, str], *, prepare: str | None = None) -> int | None:
    """:func:`_scalar` on a connection of its own (see :func:`own_connection`), as an int."""
    conn = own_connection(alias)
    try:
        if prepare is not None and conn.vendor == "postgresql":
            with conn.cursor() as cursor:
                cursor.execute(prepare)
        value = _scalar(conn, sql)
    finally:
        conn.close()
    return None if value is None else int(value)


def backend_id(alias: str = "default") -> int:
    """Return the server's id of ``alias``'s session in this thread (SQLite: the handle's id).

    Uses (and opens, if needed) the calling thread's own connection.
    """
    from django.db import connections

    conn = connections[alias]
    value = _scalar(
        conn, {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
    )
    return id(conn.connection) if value is None else int(value)


def max_connections(alias: str = "default") -> int | None:
    """Return the server's ``max_connections``; None for SQLite. Connects: raises if unreachable."""
    return _ask_server(
        alias,
        {
            "postgresql": "SELECT current_setting('max_connections')::int",
            "mysql": "SELECT @@max_connections",
        },
    )


def abandoned_sessions(alias: str = "default") -> int | None:
    """Return the server's count of sessions that ended without a goodbye; None for SQLite.

    PostgreSQL 14+: ``pg_stat_database.sessions_abandoned`` of ``alias``'s
    database. MariaDB/MySQL: the global ``Aborted_clients`` (every database of
    the server counts). A backend reports its end to the statistics a moment
    after its client vanished: poll with a deadline before concluding.
    """
    return _ask_server(
        alias,
        {
            "postgresql": (
                "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()"
            ),
            "mysql": "SHOW GLOBAL STATUS LIKE 'Aborted_clients'",
        },
        # Statistics are snapshotted once per transaction; ask for fresh ones.
        prepare="SELECT pg_stat_clear_snapshot()",
    )


def count_sessions(alias: str = "default") -> int | None:
    """Return how many other client sessions ``alias``'s database has now (None for SQLite)."""
    sessions = list_sessions(alias)
    return None if sessions is None else len(sessions)


def session_groups(alias: str = "default") -> dict[tuple[str, str], int] | None:
    """Count the other client sessions on ``alias``'s database by (client address, state).

    PostgreSQL: ``host(client_addr)`` (``"local"`` for a Unix socket) and
    ``state``; MariaDB/MySQL: ``HOST`` without its port and ``COMMAND``. None
    for SQLite.
    """
    sessions = list_sessions(alias)
    if sessions is None:
        return None
    groups: dict[tuple[str, str], int] = {}
    for session in sessions:
        key = (session.host, session.state)
        groups[key] = groups.get(key, 0) + 1
    return groups


def quiet_sessions(
    alias: str = "default", timeout: float = 5.0, *, stable_for: float = 0.1
) -> int | None:
    """Return the session count once it has not moved for ``stable_for`` seconds.

    For a baseline: sessions of earlier work may still be ending when a
    measurement starts, and would then count as "closed by" what is measured.
    """
    deadline = time.monotonic() + timeout
    last = count_sessions(alias)
    since = time.monotonic()
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        now = count_sessions(alias)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= stable_for:
            break
    return last


def settle_sessions(
    expected: int | None,
    timeout: float = 3.0,
    *,
    alias: str = "default",
    at_most: bool = False,
) -> int | None:
    """Count sessions until the count reaches ``expected`` or ``timeout`` passes; return it.

    A session whose client vanished (SIGKILL, ``os._exit``) or said goodbye
    ends when the server has read that, a moment later. ``at_most``: stop as
    soon as the count is ``expected`` or lower (for "nothing was left behind"
    checks, where sessions of earlier work may still be ending).
    """
    deadline = time.monotonic() + timeout
    while True:
        n = count_sessions(alias)
        done = n is None or n == expected or (at_most and expected is not None and n < expected)
        if done or time.monotonic() > deadline:
            return n
        time.sleep(0.05)
