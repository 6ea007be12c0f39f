"""What the database server says about its client sessions: one query per vendor.

Used by the demo and the tests (session counts), ``forksafe doctor`` (sessions
by client and state) and ``forksafe.testing`` (which local process holds a
leaked session). Every function opens a connection of its own, closes it, and
leaves that session out of what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Session", "list_sessions", "own_connection"]

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
