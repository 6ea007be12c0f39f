"""System checks (``manage.py check``), ids ``forksafe.E00N`` / ``forksafe.W00N``, never reused.

Every forksafe check id is defined in this module; what each catches and what to do is
tabled in the documentation (docs/reference/checks.md). Django runs system checks in
management commands only, never inside a server, so the uWSGI checks (W002, W003) are
logged by ``AppConfig.ready()`` under uWSGI (:func:`log_server_warnings`) and W005 at the
first ASGI request (:func:`log_asgi_warnings`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from django.core import checks

from forksafe import _fork, _green, _pooler, asgi, conf
from forksafe._uwsgi_facts import ServerFacts, server_facts

__all__ = [
    "POOLER_PROBLEM_IDS",
    "GreenFacts",
    "asgi_messages",
    "gevent_messages",
    "green_facts",
    "asgi_reason",
    "forksafe_checks",
    "log_asgi_warnings",
    "log_gevent_warnings",
    "log_server_warnings",
    "persistent_without_pool",
    "pooler_messages",
    "pooler_settings_messages",
    "register",
]

logger = logging.getLogger("forksafe")


def _settings_errors() -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    valid = ", ".join(sorted(conf.DEFAULTS))
    for key in conf.unknown_keys():
        errors.append(
            checks.Error(
                f"settings.FORKSAFE has an unknown key {key!r}.",
                hint=f"Valid keys are: {valid}. Remove or rename {key!r}.",
                id="forksafe.E001",
            )
        )
    for key, value in conf.invalid():
        if key == "FORKSAFE":
            errors.append(
                checks.Error(
                    f"settings.FORKSAFE must be a dict, not {type(value).__name__}.",
                    hint=f"Use FORKSAFE = {{...}} with the keys {valid}.",
                    id="forksafe.E001",
                )
            )
        else:
            errors.append(
                checks.Error(
                    f"settings.FORKSAFE[{key!r}] must be True or False, not {value!r}.",
                    hint=f"Set FORKSAFE[{key!r}] = {conf.DEFAULTS[key]!r} (the default) or"
                    f" {not conf.DEFAULTS[key]!r}.",
                    id="forksafe.E002",
                )
            )
    return errors


def _pool_aliases() -> list[str]:
    from django.conf import settings

    return [
        alias
        for alias, db in settings.DATABASES.items()
        if isinstance(db.get("OPTIONS"), dict) and db["OPTIONS"].get("pool")
    ]


def _pool_without_hooks() -> list[checks.CheckMessage]:
    aliases = _pool_aliases()
    if not aliases or _fork.hooks_installed():
        return []
    return [
        checks.Warning(
            f"Database(s) {', '.join(map(repr, aliases))} use Django's native connection"
            " pool, but forksafe's fork hooks are not installed: processes forked after"
            " the pool opened (gunicorn/uWSGI workers, multiprocessing) share its sessions.",
            hint="Add 'forksafe' to INSTALLED_APPS with FORKSAFE['INSTALL'] left True, or"
            " call forksafe.install() at the top of manage.py and wsgi.py.",
            id="forksafe.W001",
        )
    ]


def uwsgi_messages(facts: ServerFacts | None) -> list[checks.CheckMessage]:
    """W002/W003 for the uWSGI server ``facts`` describe; ``[]`` outside uWSGI (None)."""
    if facts is None:
        return []
    messages: list[checks.CheckMessage] = []
    if not facts.master:
        messages.append(
            checks.Warning(
                "uWSGI runs without 'master': uwsgidecorators refuses to run postfork"
                " hooks, so forksafe cannot reset a worker when it is forked, only when"
                " it first uses a connection inherited from the loading process (a"
                " WARNING per worker). 'master' adds the reset before any of your code"
                " (@postfork hooks included), mules and spoolers, and respawns.",
                hint="Add 'master = true' to the uWSGI configuration, or call"
                " forksafe.after_fork_in_child() at the start of every worker yourself.",
                id="forksafe.W002",
            )
        )
    needs = []
    if conf.get("THREADS"):
        needs.append("FORKSAFE['THREADS']")
    if _pool_aliases():
        needs.append("Django's native pool")
    if not facts.python_threads and needs:
        messages.append(
            checks.Warning(
                f"uWSGI runs without Python threads, but {' and '.join(needs)} rely on"
                " them: their threads never run between requests.",
                hint="Add 'enable-threads = true' to the uWSGI configuration.",
                id="forksafe.W003",
            )
        )
    return messages


def _uwsgi_checks() -> list[checks.CheckMessage]:
    return uwsgi_messages(server_facts())


# --- ASGI -----------------------------------------------------------------------------------


def asgi_reason() -> str | None:
    """Why this process looks like an ASGI deployment, or None."""
    from django.conf import settings

    if asgi.serving():
        return "an ASGI request was served"
    running = [name for name in asgi.ASGI_SERVERS if name in sys.modules]
    if running:
        return f"running under {running[0]}"
    if getattr(settings, "ASGI_APPLICATION", None):
        return "settings.ASGI_APPLICATION is set"
    return None


def persistent_without_pool() -> dict[str, Any]:
    """``{alias: CONN_MAX_AGE}`` of databases that keep connections without a pool."""
    from django.conf import settings

    pooled = set(_pool_aliases())
    return {
        alias: db.get("CONN_MAX_AGE", 0)
        for alias, db in settings.DATABASES.items()
        if db.get("CONN_MAX_AGE", 0) != 0 and alias not in pooled
    }


def asgi_messages(reason: str | None) -> list[checks.CheckMessage]:
    """W005 when serving ASGI (``reason`` says why we think so; None: not ASGI)."""
    persistent = persistent_without_pool()
    if reason is None or not persistent:
        return []
    settings_text = ", ".join(f"{a!r} (CONN_MAX_AGE={v!r})" for a, v in persistent.items())
    return [
        checks.Warning(
            f"Under ASGI ({reason}), database(s) {settings_text} keep connections without a"
            " pool: Django runs every request in a new thread, so a connection is never"
            " reused -- each request connects -- and the sessions of finished requests stay"
            " open until the garbage collector runs (unless forksafe closes them: THREADS).",
            hint="Set CONN_MAX_AGE = 0 and use a pool: OPTIONS={'pool': True} (PostgreSQL,"
            " psycopg 3, Django 5.1+) or a bouncer (PgBouncer, ProxySQL).",
            id="forksafe.W005",
        )
    ]


def _asgi_checks() -> list[checks.CheckMessage]:
    return asgi_messages(asgi_reason())


# --- gevent (forksafe._green) ---------------------------------------------------------------


@dataclass(frozen=True)
class GreenFacts:
    """What the gevent checks read from this process (:func:`green_facts`)."""

    #: gevent has monkey-patched ``threading``.
    patched: bool
    #: Django's connections live in a greenlet-local storage (None: no handler yet).
    connections_green: bool | None = None
    #: Aliases served by psycopg2 / by mysqlclient.
    psycopg2_aliases: list[str] = field(default_factory=list)
    mysqlclient_aliases: list[str] = field(default_factory=list)
    #: psycopg2 waits through a callback (psycogreen's ``patch_psycopg()``).
    psycopg2_green: bool = False


def _is_psycopg3() -> bool:
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:
        return False
    return bool(is_psycopg3)


def _is_mysqlclient() -> bool:
    module = sys.modules.get("MySQLdb")
    if module is not None:
        return getattr(module, "__name__", "") == "MySQLdb"  # PyMySQL's shim is "pymysql"
    try:
        return importlib.util.find_spec("MySQLdb") is not None
    except (ImportError, ValueError):
        return False


def _psycopg2_green() -> bool:
    extensions = sys.modules.get("psycopg2.extensions")
    get = getattr(extensions, "get_wait_callback", None)
    return get is not None and get() is not None


def green_facts() -> GreenFacts:
    """This process's :class:`GreenFacts` (never imports gevent; a driver only for its aliases)."""
    from django.conf import settings

    engines = {alias: str(db.get("ENGINE", "")) for alias, db in settings.DATABASES.items()}
    postgres = [a for a, e in engines.items() if e.endswith("postgresql")]
    mysql = [a for a, e in engines.items() if e.endswith("mysql")]
    return GreenFacts(
        patched=_green.patched(),
        connections_green=_green.storage_is_green(),
        psycopg2_aliases=postgres if postgres and not _is_psycopg3() else [],
        mysqlclient_aliases=mysql if mysql and _is_mysqlclient() else [],
        psycopg2_green=_psycopg2_green(),
    )


def gevent_messages(facts: GreenFacts, persistent: dict[str, Any]) -> list[checks.CheckMessage]:
    """W020-W023 for a process gevent patched (``facts``); ``persistent``: CONN_MAX_AGE > 0."""
    if not facts.patched:
        return []
    messages: list[checks.CheckMessage] = []
    if facts.connections_green is False:
        messages.append(
            checks.Warning(
                "gevent patched threading after Django created its connection handler:"
                " Django's connections live in a real thread's storage, so every greenlet"
                " shares one connection (concurrent queries on one session).",
                hint="Patch first: gevent.monkey.patch_all() or forksafe.gevent.patch_all()"
                " before Django is imported; under gunicorn -k gevent with preload_app, use"
                " forksafe's hooks in gunicorn.conf.py (they re-home the connections), or"
                " drop preload_app.",
                id="forksafe.W020",
            )
        )
    if facts.psycopg2_aliases and not facts.psycopg2_green:
        aliases = ", ".join(map(repr, facts.psycopg2_aliases))
        messages.append(
            checks.Warning(
                f"Database(s) {aliases} use psycopg2 under gevent without psycogreen: every"
                " query blocks the whole worker (all its greenlets) until it returns.",
                hint="pip install psycogreen and call forksafe.gevent.patch_all() (or"
                " psycogreen.gevent.patch_psycopg()) in each worker; or use psycopg 3.",
                id="forksafe.W021",
            )
        )
    if facts.mysqlclient_aliases:
        aliases = ", ".join(map(repr, facts.mysqlclient_aliases))
        messages.append(
            checks.Warning(
                f"Database(s) {aliases} use mysqlclient under gevent: its C client cannot"
                " yield to the hub, so every query blocks the whole worker.",
                hint="Use PyMySQL (pip install PyMySQL; pymysql.install_as_MySQLdb()) under"
                " gevent, or a sync/gthread worker with mysqlclient.",
                id="forksafe.W022",
            )
        )
    if persistent:
        settings_text = ", ".join(f"{a!r} (CONN_MAX_AGE={v!r})" for a, v in persistent.items())
        messages.append(
            checks.Warning(
                f"Under gevent, database(s) {settings_text} keep a connection per greenlet"
                " without a pool: up to one session per concurrent client connection or"
                " task (gunicorn's worker_connections, 1000 by default) per worker.",
                hint="Use a pool: OPTIONS={'pool': {...}} with CONN_MAX_AGE = 0 (Django's"
                " native pool with psycopg 3; ENGINE 'forksafe.backends.mysql' or"
                " 'forksafe.backends.postgresql' for PyMySQL and psycopg2), or"
                " CONN_MAX_AGE = 0.",
                id="forksafe.W023",
            )
        )
    return messages


def _gevent_checks() -> list[checks.CheckMessage]:
    if not _green.patched():
        return []
    return gevent_messages(green_facts(), persistent_without_pool())


_gevent_logged_in = 0  # the pid that logged them: once per process


def log_gevent_warnings() -> list[checks.CheckMessage]:
    """Log W020-W023 in a process gevent patched (Django runs no checks inside a server)."""
    global _gevent_logged_in
    from django.conf import settings

    if not settings.configured or _gevent_logged_in == os.getpid():
        return []
    _gevent_logged_in = os.getpid()
    messages = _gevent_checks()
    for message in messages:
        logger.warning("%s: %s HINT: %s", message.id, message.msg, message.hint)
    return messages


# --- PgBouncer (forksafe._pooler) -----------------------------------------------------------


def pooler_messages() -> list[checks.CheckMessage]:
    """The system checks for what the settings alone show (``forksafe.E004``, ``W006``-``W009``)."""
    from django.conf import settings

    return pooler_settings_messages(settings.DATABASES, conf.raw_value("POOLER"))


#: The check that reports each kind of :class:`forksafe._pooler.Problem`.
POOLER_PROBLEM_IDS = {
    "server-side-cursors": "forksafe.W006",
    "prepared-statements": "forksafe.W007",
    "session-state": "forksafe.W008",
}


def pooler_settings_messages(databases: dict[str, Any], declared: Any) -> list[checks.CheckMessage]:
    """The check messages for ``DATABASES`` and ``FORKSAFE["POOLER"]`` (``declared``)."""
    why = _pooler.invalid_declaration(databases, declared)
    if why is not None:
        return [
            checks.Error(
                f"settings.FORKSAFE['POOLER'] {why}.",
                hint="Use FORKSAFE['POOLER'] = 'transaction' (every PostgreSQL alias) or a dict"
                " such as {'default': 'transaction', 'direct': None}.",
                id="forksafe.E004",
            )
        ]
    modes = _pooler.declared_modes(databases, declared)
    explicit = declared if isinstance(declared, dict) else {}
    messages: list[checks.CheckMessage] = []
    for alias, db in databases.items():
        if not str(db.get("ENGINE", "")).endswith("postgresql"):
            continue
        mode = modes.get(alias)
        if (
            mode is None
            and alias not in explicit
            and str(db.get("PORT")) == str(_pooler.PGBOUNCER_PORT)
        ):
            messages.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] connects to port {_pooler.PGBOUNCER_PORT}, PgBouncer's"
                    " default, but FORKSAFE['POOLER'] does not say how it pools: the"
                    " settings transaction pooling needs are not checked.",
                    hint=f"Set FORKSAFE['POOLER'] = {{{alias!r}: 'transaction'}} (or"
                    " 'session'; None when no pooler listens there).",
                    id="forksafe.W009",
                )
            )
        for problem in _pooler.settings_problems(alias, db, mode or ""):
            messages.append(
                checks.Warning(
                    problem.message, hint=problem.fix, id=POOLER_PROBLEM_IDS[problem.kind]
                )
            )
    return messages


def forksafe_checks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every forksafe check; registered with Django's check framework."""
    return [
        *_settings_errors(),
        *_pool_without_hooks(),
        *_uwsgi_checks(),
        *_asgi_checks(),
        *_gevent_checks(),
        *pooler_messages(),
    ]


def register() -> None:
    """Register the checks (called from ``AppConfig.ready()``; idempotent)."""
    checks.register(forksafe_checks)


def log_asgi_warnings(reason: str) -> None:
    """Log W005 inside an ASGI server (``reason``: why we know it is one)."""
    for message in asgi_messages(reason):
        logger.warning("%s: %s HINT: %s", message.id, message.msg, message.hint)


def log_server_warnings() -> list[checks.CheckMessage]:
    """Log the checks that only make sense inside a server (Django won't run them there).

    W002 is left out: ``forksafe.uwsgi.install()`` already logs the missing
    master, with what to do.
    """
    messages = [m for m in _uwsgi_checks() if m.id != "forksafe.W002"]
    for message in messages:
        logger.warning("%s: %s HINT: %s", message.id, message.msg, message.hint)
    return messages
