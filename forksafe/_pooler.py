"""PgBouncer in front of PostgreSQL: what its admin console says, and what pooling needs.

Two jobs, used by ``forksafe doctor`` and the system checks:

* :func:`read_console` / :func:`inspect_alias`: ask PgBouncer's admin console
  (the virtual database ``pgbouncer``; ``SHOW CONFIG``, ``SHOW DATABASES``,
  ``SHOW POOLS``) for its limits, pool modes and connections now;
* :func:`settings_problems`: the ``DATABASES`` settings that break under
  transaction (or statement) pooling, each with its fix.

How the pool mode of an alias is known: ``FORKSAFE["POOLER"]`` declares it
(:func:`declared_modes`); ``forksafe doctor`` also asks the console.
https://www.pgbouncer.org/usage.html#admin-console
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MODES",
    "PGBOUNCER_PORT",
    "ConsoleError",
    "Pool",
    "Pooler",
    "Problem",
    "check_settings",
    "declared_modes",
    "connect_console",
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
    """Alias -> pool mode from ``FORKSAFE["POOLER"]`` (a mode for every PostgreSQL alias,
    or a dict alias -> mode); a ``None`` mode means "connects directly"."""
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

    check_id: str  # the system check that reports it
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
                "forksafe.W006",
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
                "forksafe.W007",
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
                "forksafe.W008",
                f"{where} is behind {mode} pooling but sets session state at connect:"
                f" {'; '.join(state)}. It applies to one server session only; the next"
                " transaction may run on another.",
                "Set it on the server instead (ALTER ROLE ... SET, ALTER DATABASE ... SET),"
                " or connect this alias directly or through a session-mode pool.",
            )
        )
    return problems


def pooler_messages() -> list[Any]:
    """The system checks for what the settings alone show (``forksafe.E004``, ``W006``-``W009``)."""
    from django.conf import settings

    from forksafe import conf

    return check_settings(settings.DATABASES, conf.raw_value("POOLER"))


def check_settings(databases: dict[str, Any], declared: Any) -> list[Any]:
    """The check messages for ``DATABASES`` and ``FORKSAFE["POOLER"]`` (``declared``)."""
    from django.core import checks

    why = invalid_declaration(databases, declared)
    if why is not None:
        return [
            checks.Error(
                f"settings.FORKSAFE['POOLER'] {why}.",
                hint="Use FORKSAFE['POOLER'] = 'transaction' (every PostgreSQL alias) or a dict"
                " such as {'default': 'transaction', 'direct': None}.",
                id="forksafe.E004",
            )
        ]
    modes = declared_modes(databases, declared)
    explicit = declared if isinstance(declared, dict) else {}
    messages: list[Any] = []
    for alias, db in databases.items():
        if not str(db.get("ENGINE", "")).endswith("postgresql"):
            continue
        mode = modes.get(alias)
        if mode is None and alias not in explicit and str(db.get("PORT")) == str(PGBOUNCER_PORT):
            messages.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] connects to port {PGBOUNCER_PORT}, PgBouncer's"
                    " default, but FORKSAFE['POOLER'] does not say how it pools: the"
                    " settings transaction pooling needs are not checked.",
                    hint=f"Set FORKSAFE['POOLER'] = {{{alias!r}: 'transaction'}} (or"
                    " 'session'; None when no pooler listens there).",
                    id="forksafe.W009",
                )
            )
        for problem in settings_problems(alias, db, mode or ""):
            messages.append(checks.Warning(problem.message, hint=problem.fix, id=problem.check_id))
    return messages


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
    from forksafe import _sessions

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


def findings(
    pooler: Pooler, aliases: list[str], declared: dict[str, str]
) -> list[tuple[str, str, str]]:
    """What ``forksafe doctor`` says about ``pooler`` for ``aliases``: (level, message, hint).

    Connections now per database; settings that break under the pool mode the
    console reports (unless ``FORKSAFE["POOLER"]`` declared that mode: the
    system checks report those); ``CONN_MAX_AGE`` against the pooler's timeouts.
    """
    from django.db import connections

    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for alias in aliases:
        db = connections.settings[alias]
        name = str(db.get("NAME"))
        pool = pooler.pools.get(name) or pooler.pools.get("*")
        if pool is None:
            out.append(
                (
                    "error",
                    f"{pooler.version} at {pooler.address} has no database {name!r}"
                    f" (alias {alias!r})",
                    f"add '{name} = host=... dbname={name}' to its [databases] section",
                )
            )
            continue
        if name not in seen:
            seen.add(name)
            limit = pool.max_db_connections or "unlimited"
            out.append(
                (
                    "info",
                    f"{pooler.version} pools {name!r} in {pool.pool_mode} mode to"
                    f" {pool.server}/{pool.server_database}: {pool.clients} client connection(s)"
                    f" now (max_client_conn {pooler.max_client_conn} for the pooler,"
                    f" {pooler.clients} in all), {pool.servers} server connection(s) now"
                    f" (pool_size {pool.pool_size}, reserve_pool {pool.reserve_pool},"
                    f" max_db_connections {limit}), {pool.waiting} client(s) waiting",
                    "",
                )
            )
        mode = declared.get(alias)
        if mode is not None and mode != pool.pool_mode:
            out.append(
                (
                    "warning",
                    f"FORKSAFE['POOLER'] says {mode!r} for alias {alias!r}, but PgBouncer pools"
                    f" {name!r} in {pool.pool_mode} mode",
                    f"set FORKSAFE['POOLER'] = {{{alias!r}: {pool.pool_mode!r}}}",
                )
            )
        if mode != pool.pool_mode:  # else the system checks say it already
            for problem in settings_problems(alias, db, pool.pool_mode):
                out.append(("warning", f"{problem.check_id}: {problem.message}", problem.fix))
        out += _timeouts(alias, db, pooler, pool)
    return out


def _timeouts(
    alias: str, db: dict[str, Any], pooler: Pooler, pool: Pool
) -> list[tuple[str, str, str]]:
    """``CONN_MAX_AGE`` against ``client_idle_timeout`` and ``server_idle_timeout``."""
    age = db.get("CONN_MAX_AGE", 0)
    shown = "None (forever)" if age is None else f"{age} s"
    out = []
    idle = pooler.client_idle_timeout
    if idle > 0 and (age is None or age > idle) and not db.get("CONN_HEALTH_CHECKS"):
        out.append(
            (
                "warning",
                f"alias {alias!r} keeps connections for CONN_MAX_AGE {shown}, but PgBouncer"
                f" closes clients idle for client_idle_timeout {idle:g} s: the first query"
                " after a quiet spell fails on a connection the pooler closed",
                f"set CONN_MAX_AGE below {idle:g} or CONN_HEALTH_CHECKS = True for {alias!r}",
            )
        )
    if pool.pool_mode == "session" and age != 0:
        out.append(
            (
                "info",
                f"alias {alias!r}: under session pooling each Django connection keeps its server"
                f" connection for CONN_MAX_AGE {shown} (server_idle_timeout"
                f" {pooler.server_idle_timeout:g} s closes only unused ones): the pool shares"
                " nothing between them",
                "transaction pooling, or CONN_MAX_AGE = 0 to give the server connection back"
                " after each request",
            )
        )
    elif pool.pool_mode != "session":
        out.append(
            (
                "info",
                f"alias {alias!r}: under {pool.pool_mode} pooling server connections are shared"
                f" and closed after server_idle_timeout {pooler.server_idle_timeout:g} s unused;"
                f" CONN_MAX_AGE {shown} keeps only the client connection to the pooler. Code that"
                " keeps session state across transactions (SET, advisory locks, LISTEN,"
                " temporary tables) needs an alias that connects directly",
                "",
            )
        )
    return out
