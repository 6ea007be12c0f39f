"""PgBouncer in front of PostgreSQL: what its admin console says, and what pooling needs.

Two jobs, used by ``forksafe doctor`` and the system checks:

* :func:`read_console` / :func:`detect`: ask PgBouncer's admin console
  (the virtual database ``pgbouncer``; ``SHOW CONFIG``, ``SHOW DATABASES``,
  ``SHOW POOLS``) for its limits, pool modes and connections now;
* :func:`settings_problems`: the ``DATABASES`` settings that break under
  transaction (or statement) pooling, each with its fix.

The system checks built on them (``forksafe.E004``, ``W006``-``W009``) are in
``forksafe.checks``; what ``forksafe doctor`` says about a pooler, in ``forksafe.doctor``.

How the pool mode of an alias is known: ``FORKSAFE["POOLER"]`` declares it
(:func:`declared_modes`); ``forksafe doctor`` also asks the console.
https://www.pgbouncer.org/usage.html#admin-console
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forksafe import _sessions

__all__ = [
    "MODES",
    "PGBOUNCER_PORT",
    "ConsoleError",
    "Pool",
    "Pooler",
    "Problem",
    "connect_console",
    "console_params",
    "declared_modes",
    "detect",
    "invalid_declaration",
    "read_console",
    "settings_problems",
    "show",
]

#: PgBouncer's pool modes (``pool_mode``).
MODES = ("session", "transaction", "statement")
#: PgBouncer's default ``listen_port``: a ``PORT`` of 6432 most likely is a PgBouncer.
PGBOUNCER_PORT = 6432
#: The message PostgreSQL answers when there is no pooler: no database of that name.
_NOT_A_POOLER = 'database "pgbouncer" does not exist'


class ConsoleError(Exception):
    """The admin console did not answer; the message is one line that says why."""


@dataclass
class Pool:
    """One PgBouncer database entry as the application's alias uses it."""

    database: str  # the name clients connect to (the alias's NAME)
    user: str
    pool_mode: str
    pool_size: int  # server connections per (database, user) pair
    reserve_pool: int
    max_db_connections: int  # 0: unlimited
    server: str  # host:port PgBouncer connects to
    server_database: str
    clients: int  # client connections of this (database, user) pair now
    servers: int  # server connections of this pair now
    waiting: int  # clients waiting for a server now


@dataclass
class Pooler:
    """A PgBouncer and the limits that matter for sizing (``SHOW CONFIG``)."""

    address: str
    version: str
    pool_mode: str
    max_client_conn: int
    default_pool_size: int
    max_db_connections: int
    max_user_connections: int
    server_idle_timeout: float
    client_idle_timeout: float
    ignore_startup_parameters: str
    clients: int  # every client connection now (the console's own left out)
    pools: dict[str, Pool] = field(default_factory=dict)  # by database name


def show(conn: Any, what: str) -> list[dict[str, Any]]:
    """``SHOW <what>`` on a console connection, one dict per row."""
    cursor = conn.cursor()
    try:
        cursor.execute(f"SHOW {what}")
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # libpq: 'connection to server at "h", port p failed: FATAL:  <reason>'
    return text.rsplit("failed: ", 1)[-1] if "failed: " in text else text


def connect_console(database: Any, params: dict[str, Any], timeout: int = 5) -> Any:
    """A connection to the admin console with ``database`` (psycopg or psycopg2).

    ``params``: ``host``, ``port``, ``user``, ``password`` and libpq's ``ssl*``
    options (others are ignored).
    Raises :class:`ConsoleError` when it does not answer, ``LookupError`` when
    PostgreSQL itself answers there (no pooler).
    """
    kwargs = {
        k: v
        for k, v in params.items()
        if v and (k in ("host", "port", "user", "password") or k.startswith("ssl"))
    }
    try:
        conn = database.connect(dbname="pgbouncer", connect_timeout=timeout, **kwargs)
    except database.Error as exc:
        line = _first_line(exc)
        if _NOT_A_POOLER in line:
            raise LookupError(line) from None
        raise ConsoleError(line) from None
    conn.autocommit = True  # the console runs no transactions
    return conn


def read_console(database: Any, params: dict[str, Any]) -> Pooler:
    """What the PgBouncer at ``params`` (``host``/``port``/``user``/``password``) says.

    Raises :class:`ConsoleError` (console unreachable, user not in
    ``admin_users``/``stats_users``) or ``LookupError`` (PostgreSQL answers there).
    """
    conn = connect_console(database, params)
    try:
        version = show(conn, "VERSION")
        config = {r["key"]: r["value"] for r in show(conn, "CONFIG")}
        databases = show(conn, "DATABASES")
        pools = show(conn, "POOLS")
    except database.Error as exc:
        raise ConsoleError(_first_line(exc)) from None
    finally:
        conn.close()
    by_pair = {(p["database"], p["user"]): p for p in pools}
    pooler = Pooler(
        address=f"{params.get('host') or 'localhost'}:{params.get('port') or PGBOUNCER_PORT}",
        version=str(next(iter(version[0].values()))) if version else "PgBouncer",
        pool_mode=str(config.get("pool_mode", "session")),
        max_client_conn=int(config.get("max_client_conn", 100)),
        default_pool_size=int(config.get("default_pool_size", 20)),
        max_db_connections=int(config.get("max_db_connections", 0)),
        max_user_connections=int(config.get("max_user_connections", 0)),
        server_idle_timeout=float(config.get("server_idle_timeout", 600)),
        client_idle_timeout=float(config.get("client_idle_timeout", 0)),
        ignore_startup_parameters=str(config.get("ignore_startup_parameters", "")),
        clients=sum(_clients(p) for p in pools if p["database"] != "pgbouncer"),
    )
    for db in databases:
        if db["name"] == "pgbouncer":
            continue
        user = str(db.get("force_user") or params.get("user") or "")
        row = by_pair.get((db["name"], user), {})
        pooler.pools[str(db["name"])] = Pool(
            database=str(db["name"]),
            user=user,
            pool_mode=str(row.get("pool_mode") or db.get("pool_mode") or pooler.pool_mode),
            pool_size=int(db["pool_size"]),
            reserve_pool=int(db.get("reserve_pool") or 0),
            max_db_connections=int(db.get("max_connections") or 0),
            server=f"{db.get('host') or 'localhost'}:{db.get('port') or 5432}",
            server_database=str(db.get("database") or db["name"]),
            clients=_clients(row),
            servers=sum(
                int(row.get(k) or 0)
                for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
            ),
            waiting=int(row.get("cl_waiting") or 0),
        )
    return pooler


def _clients(row: dict[str, Any]) -> int:
    return sum(int(row.get(k) or 0) for k in ("cl_active", "cl_waiting"))


# --- settings --------------------------------------------------------------------------------


def declared_modes(databases: dict[str, Any], declared: Any) -> dict[str, str]:
    """Return the pool mode of each alias that ``FORKSAFE["POOLER"]`` declares.

    ``declared`` is a mode for every PostgreSQL alias, or a dict alias -> mode; a
    ``None`` mode means "connects directly".
    """
    if isinstance(declared, str):
        return {
            alias: declared
            for alias, db in databases.items()
            if str(db.get("ENGINE", "")).endswith("postgresql")
        }
    if isinstance(declared, dict):
        return {str(a): str(m) for a, m in declared.items() if m is not None}
    return {}


def invalid_declaration(databases: dict[str, Any], declared: Any) -> str | None:
    """Why ``FORKSAFE["POOLER"]`` is wrong, or None when it is fine (or unset)."""
    modes = ", ".join(map(repr, MODES))
    if declared is None:
        return None
    if isinstance(declared, str):
        return None if declared in MODES else f"must be one of {modes} or a dict, not {declared!r}"
    if not isinstance(declared, dict):
        return f"must be one of {modes} or a dict alias -> mode, not {type(declared).__name__}"
    for alias, mode in declared.items():
        if alias not in databases:
            return f"names {alias!r}, which is not in DATABASES ({', '.join(databases)})"
        if mode is not None and mode not in MODES:
            return f"gives {alias!r} the pool mode {mode!r}: use one of {modes} or None"
    return None


@dataclass(frozen=True)
class Problem:
    """A setting that breaks under a pool mode, and how to fix it."""

    kind: str  # "server-side-cursors", "prepared-statements" or "session-state"
    message: str
    fix: str


def settings_problems(alias: str, db: dict[str, Any], mode: str) -> list[Problem]:
    """What in ``DATABASES[alias]`` (``db``) breaks when a pooler pools it in ``mode``.

    Under transaction (and statement) pooling each transaction may run on
    another server session: nothing may outlive a transaction on the server.
    https://www.pgbouncer.org/features.html#sql-feature-map-for-pooling-modes
    """
    if mode not in ("transaction", "statement"):
        return []
    options = db.get("OPTIONS") or {}
    problems = []
    where = f"DATABASES[{alias!r}]"
    if not db.get("DISABLE_SERVER_SIDE_CURSORS"):
        problems.append(
            Problem(
                "server-side-cursors",
                f"{where} is behind {mode} pooling but server-side cursors are on:"
                " QuerySet.iterator() declares a cursor WITH HOLD that the next transaction"
                ' may not find (error: cursor "_django_curs_..." does not exist).',
                f'Set {where}["DISABLE_SERVER_SIDE_CURSORS"] = True.',
            )
        )
    # Django's default cursor binds on the client and never prepares; server-side binding
    # prepares after prepare_threshold executions (Django's default None: never).
    if options.get("server_side_binding") is True and options.get("prepare_threshold") is not None:
        problems.append(
            Problem(
                "prepared-statements",
                f"{where} is behind {mode} pooling but psycopg 3 prepares statements"
                f" (OPTIONS['server_side_binding'] with OPTIONS['prepare_threshold'] ="
                f" {options['prepare_threshold']!r}): a prepared statement lives in one server"
                " session and the next transaction may run on another (error: prepared"
                ' statement "_pg3_0" does not exist).',
                f'Remove OPTIONS["prepare_threshold"] from {where} (Django\'s default is None).',
            )
        )
    state = []
    if options.get("assume_role"):
        state.append(f"OPTIONS['assume_role'] ({options['assume_role']!r}: SET ROLE once)")
    if options.get("options"):
        state.append(f"OPTIONS['options'] ({options['options']!r}: startup parameters)")
    if state:
        problems.append(
            Problem(
                "session-state",
                f"{where} is behind {mode} pooling but sets session state at connect:"
                f" {'; '.join(state)}. It applies to one server session only; the next"
                " transaction may run on another.",
                "Set it on the server instead (ALTER ROLE ... SET, ALTER DATABASE ... SET),"
                " or connect this alias directly or through a session-mode pool.",
            )
        )
    return problems


# --- forksafe doctor ------------------------------------------------------------------------


def console_params(alias: str) -> tuple[Any, dict[str, Any]]:
    """The driver module and the console's ``host``/``port``/``user``/``password`` for ``alias``."""
    from django.db import connections

    s = connections.settings[alias]
    params = {
        "host": s.get("HOST") or "localhost",
        "port": int(s.get("PORT") or 5432),
        "user": s.get("USER") or None,
        "password": s.get("PASSWORD") or None,
    }
    options = s.get("OPTIONS") or {}
    params.update({k: v for k, v in options.items() if str(k).startswith("ssl")})  # TLS as the app
    return connections[alias].Database, params  # type: ignore[attr-defined]


def _listening_port(alias: str) -> int | None:
    """The port of the PostgreSQL server behind ``alias``'s connection (None over a socket)."""
    conn = _sessions.own_connection(alias)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT inet_server_port()")
            row = cursor.fetchone()
    finally:
        conn.close()
    return None if row is None or row[0] is None else int(row[0])


def detect(alias: str, *, declared: bool) -> Pooler | None:
    """The PgBouncer that ``alias`` connects to, or None when it reaches PostgreSQL directly.

    Asks the console when the pooler is ``declared`` (``FORKSAFE["POOLER"]``), when
    ``PORT`` is 6432, or when the server behind the connection listens on
    another port than ``PORT`` (something sits in between). Raises
    :class:`ConsoleError` when a console should answer and does not.
    """
    database, params = console_params(alias)
    if not declared and params["port"] != PGBOUNCER_PORT:
        port = _listening_port(alias)
        if port is None or port == params["port"]:
            return None
    try:
        return read_console(database, params)
    except LookupError:
        return None
