"""``forksafe doctor``: is this deployment's database set-up safe across fork and threads?

Run it where the application runs (same settings, same environment)::

    forksafe doctor --settings mysite.settings --processes 4 --threads 8
    python manage.py forksafe_doctor --processes 4 --threads 8 --json
    forksafe doctor --settings mysite.settings --fleet fleet.toml

It reports, as findings:

* whether forksafe's fork hooks are installed once Django is set up (the
  ``forksafe`` app in ``INSTALLED_APPS`` does it) and the ``FORKSAFE`` options;
* the servers and workers installed or detected from the environment (uWSGI,
  gunicorn, Celery, RQ; ``SERVER_SOFTWARE``, ``WEB_CONCURRENCY``, ``UWSGI_*``,
  ``GUNICORN_CMD_ARGS``) and the multiprocessing start method;
* forksafe's system checks (``forksafe.E00N`` / ``forksafe.W00N``);
* per database server: the sessions on each configured database now, by client
  address and state, ``max_connections``, and the worst-case demand of this
  deployment -- processes x threads x aliases on that server (a native pool
  counts its own size per process) -- against ``max_connections``;
* behind PgBouncer (see :mod:`forksafe._pooler`): its pools, the settings that
  break under its pool mode, and the demand against each limit on the way.

``--fleet FILE`` instead puts the worst case of groups of hosts (see
:mod:`forksafe._fleet`) against every pooler and server limit, as a table.

Exit code 0 when nothing is wrong, 1 when something is (a check error or
warning, a database that does not answer, demand above a limit), 2 for bad
options or input (a fleet file, a console that does not answer). Everything
runs in the calling thread of one process; the database connections it opens
are its own and closed before it returns.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from forksafe import (
    _drivers,
    _fleet,
    _fork,
    _green,
    _pooler,
    _sessions,
    _uwsgi_facts,
    asgi,
    checks,
    conf,
)

__all__ = [
    "DatabaseServer",
    "FleetReport",
    "Finding",
    "InputError",
    "Report",
    "add_arguments",
    "main",
    "pooler_findings",
    "read_pooler_console",
    "run_doctor",
    "run_fleet",
    "run_options",
]

PROBLEM_LEVELS = ("warning", "error")


@dataclass
class Finding:
    """One plain-language statement; ``warning`` and ``error`` make the exit code 1."""

    level: str
    topic: str
    message: str
    hint: str = ""


@dataclass
class DatabaseServer:
    """One database server (vendor, host, port) or SQLite file, and the aliases on it."""

    vendor: str
    address: str
    aliases: list[str]
    databases: list[str]
    max_connections: int | None = None
    demand: int | None = None
    demand_formula: str = ""
    # [client address, state, sessions, database], other clients' sessions now.
    sessions: list[tuple[str, str, int, str]] = field(default_factory=list)
    error: str | None = None
    pooler: _pooler.Pooler | None = None  # the PgBouncer the aliases connect to
    limits: list[_fleet.Row] = field(default_factory=list)  # behind a pooler: each limit


@dataclass
class Report:
    """Everything ``forksafe doctor`` found; :meth:`render` / :meth:`to_json` print it."""

    processes: int
    threads: int
    sizing: str
    hooks_installed: bool
    options: dict[str, bool]
    servers: dict[str, str]
    start_method: str | None
    default_start_method: str
    databases: list[DatabaseServer]
    findings: list[Finding]

    @property
    def problems(self) -> list[Finding]:
        """The findings at ``warning`` or ``error`` level."""
        return [f for f in self.findings if f.level in PROBLEM_LEVELS]

    @property
    def exit_code(self) -> int:
        """0 when nothing is wrong, 1 when something is."""
        return 1 if self.problems else 0

    def to_json(self) -> str:
        """The report as one JSON object (with ``exit_code``)."""
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return json.dumps(data, indent=2)

    def render(self) -> str:
        """The report as text for a terminal."""
        lines = [
            f"forksafe doctor: {self.processes} process(es) x {self.threads} thread(s)"
            f" ({self.sizing})",
            "",
        ]
        width = max(len(f.topic) for f in self.findings)
        for f in self.findings:
            lines.append(f"{f.level.upper():8} {f.topic.ljust(width)}  {f.message}")
            if f.hint:
                lines.append(f"{'':8} {'':{width}}  hint: {f.hint}")
        for db in self.databases:
            if not db.sessions:
                continue
            lines += ["", f"sessions now on {db.vendor} {db.address} (other clients):"]
            rows = [("database", "client", "state", "sessions")]
            rows += [(d, c, s, str(n)) for c, s, n, d in db.sessions]
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for row in rows:
                cells = (v.ljust(w) for v, w in zip(row, widths, strict=True))
                lines.append(("  " + "  ".join(cells)).rstrip())
        problems = len(self.problems)
        lines += ["", f"{problems} problem(s) found." if problems else "No problems found."]
        return "\n".join(lines) + "\n"


# --- environment ------------------------------------------------------------------------------


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _gunicorn_args() -> dict[str, int]:
    """``--workers``/``--threads`` from ``GUNICORN_CMD_ARGS`` (what gunicorn reads at start)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-w", "--workers", type=int)
    parser.add_argument("--threads", type=int)
    try:
        known, _ = parser.parse_known_args(shlex.split(os.environ.get("GUNICORN_CMD_ARGS", "")))
    except (SystemExit, ValueError):
        return {}
    return {k: v for k, v in vars(known).items() if v is not None}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def detect_servers() -> dict[str, str]:
    """What each of uWSGI, gunicorn, Celery, RQ is here: running, installed, or not installed.

    Read from this process's environment and importable packages only.
    """
    running, configured = _uwsgi_facts.server_facts(), _uwsgi_facts.configured_facts()
    found = {
        "uwsgi": (
            "running (inside uWSGI)"
            if running is not None
            else f"configured by {configured.source}"
            if configured is not None
            else "installed"
            if _installed("uwsgidecorators") or shutil.which("uwsgi")
            else ""
        ),
        "gunicorn": (
            f"running ({os.environ['SERVER_SOFTWARE']})"
            if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")
            else "configured by environment (GUNICORN_CMD_ARGS)"
            if "GUNICORN_CMD_ARGS" in os.environ
            else "installed"
            if _installed("gunicorn")
            else ""
        ),
        "celery": "installed" if _installed("celery") else "",
        "rq": "installed" if _installed("rq") else "",
    }
    return {name: state or "not installed" for name, state in found.items()}


def detect_sizing(processes: int | None, threads: int | None) -> tuple[int, int, str]:
    """Processes and threads per process of the deployment, and where the figures came from.

    Given values win; otherwise uWSGI's ``processes``/``threads`` (inside
    uWSGI, or from ``UWSGI_PROCESSES``/``UWSGI_THREADS``), ``GUNICORN_CMD_ARGS``
    (``--workers``, ``--threads``), ``WEB_CONCURRENCY``; else 1.
    """
    gunicorn = _gunicorn_args()
    facts = _uwsgi_facts.server_facts() or _uwsgi_facts.configured_facts()
    p_sources = [
        ("--processes", processes),
        ("uWSGI processes", facts and facts.processes),
        ("GUNICORN_CMD_ARGS --workers", gunicorn.get("workers")),
        ("WEB_CONCURRENCY", _env_int("WEB_CONCURRENCY")),
    ]
    t_sources = [
        ("--threads", threads),
        ("uWSGI threads", facts and facts.threads),
        ("GUNICORN_CMD_ARGS --threads", gunicorn.get("threads")),
    ]
    p_name, p = next(((n, v) for n, v in p_sources if v), ("default", 1))
    t_name, t = next(((n, v) for n, v in t_sources if v), ("default", 1))
    sizing = f"processes from {p_name}, threads from {t_name}"
    if "default" in (p_name, t_name):
        sizing += "; pass --processes/--threads for the real figures"
    return p, t, sizing


def _environment_findings(hooks: bool, servers: dict[str, str]) -> list[Finding]:
    findings = []
    in_use = [n for n, s in servers.items() if s != "not installed"]
    if hooks:
        findings.append(Finding("ok", "forksafe", "fork hooks installed (os.register_at_fork)"))
    else:
        findings.append(
            Finding(
                "warning",
                "forksafe",
                "fork hooks NOT installed after django.setup(): forked workers"
                + (f" ({', '.join(in_use)})" if in_use else "")
                + " would share the parent's database sessions",
                "add 'forksafe' to INSTALLED_APPS (with FORKSAFE['INSTALL'] left True)",
            )
        )
    options = ", ".join(f"{k}={conf.get(k)}" for k in sorted(conf.DEFAULTS))
    findings.append(Finding("info", "settings", f"FORKSAFE: {options}"))
    for name, state in servers.items():
        findings.append(Finding("info", name, state))
    facts = _uwsgi_facts.server_facts() or _uwsgi_facts.configured_facts()
    if facts is not None:
        text = (
            "uWSGI forks in C: forksafe detaches the workers' inherited connections"
            " through uwsgidecorators' postfork chain, which needs 'master = true'"
        )
        if facts.lazy_apps:
            text += "; with lazy-apps each worker loads the app after the fork"
        findings.append(Finding("info", "uwsgi", text))
    return findings


def _start_method_finding(current: str | None, default: str) -> Finding:
    method = current or default
    how = "set" if current else "default, not set"
    text = f"multiprocessing start method {method!r} ({how})"
    if method == "fork":
        text += ": children inherit connections, forksafe's hooks detach them"
    else:
        text += ": children start fresh interpreters and must call django.setup()"
    return Finding("info", "start method", text)


def _check_findings() -> list[Finding]:
    from django.core import checks as django_checks

    findings = []
    for message in checks.forksafe_checks():
        if message.level >= django_checks.ERROR:
            level = "error"
        elif message.level >= django_checks.WARNING:
            level = "warning"
        else:
            level = "info"
        findings.append(Finding(level, str(message.id), message.msg, str(message.hint or "")))
    if not findings:
        findings.append(Finding("ok", "checks", "forksafe's system checks pass"))
    return findings


def _asgi_findings() -> list[Finding]:
    """What cannot work under ASGI, when an ASGI server is installed but not detected.

    Detected ASGI (``forksafe.W005``) is already among the check findings.
    """
    persistent = checks.persistent_without_pool()
    installed = [name for name in asgi.ASGI_SERVERS if _installed(name)]
    if checks.asgi_reason() is not None or not installed or not persistent:
        return []
    settings_text = ", ".join(f"{a!r} CONN_MAX_AGE={v!r}" for a, v in persistent.items())
    return [
        Finding(
            "info",
            "asgi",
            f"{', '.join(installed)} installed: if you serve ASGI, {settings_text} without a"
            " pool cannot work -- every request runs in a new thread, so nothing is reused",
            "under ASGI set CONN_MAX_AGE = 0 and use a pool (OPTIONS={'pool': True} on"
            " PostgreSQL with psycopg 3) or a bouncer",
        )
    ]


def _gevent_findings() -> list[Finding]:
    """What cannot work under gevent, when gevent is installed but has not patched this process.

    In a patched process the checks (``forksafe.W020``-``W023``) say it already.
    """
    if _green.patched() or not _installed("gevent"):
        return []
    facts = checks.green_facts()
    findings = []
    if facts.mysqlclient_aliases:
        findings.append(
            Finding(
                "info",
                "gevent",
                f"gevent installed: under gevent, {', '.join(map(repr, facts.mysqlclient_aliases))}"
                " (mysqlclient) would block the whole worker on every query (forksafe.W022)",
                "under gevent use PyMySQL",
            )
        )
    if facts.psycopg2_aliases and not _installed("psycogreen"):
        findings.append(
            Finding(
                "info",
                "gevent",
                f"gevent installed: under gevent, {', '.join(map(repr, facts.psycopg2_aliases))}"
                " (psycopg2 without psycogreen) would block the whole worker on every query"
                " (forksafe.W021)",
                "pip install 'forksafe[gevent]' and call forksafe.gevent.patch_all()",
            )
        )
    persistent = checks.persistent_without_pool()
    if persistent:
        settings_text = ", ".join(f"{a!r} CONN_MAX_AGE={v!r}" for a, v in persistent.items())
        findings.append(
            Finding(
                "info",
                "gevent",
                f"gevent installed: under gevent, {settings_text} without a pool keeps a"
                " session per greenlet, up to worker_connections per worker (forksafe.W023)",
                "under gevent use a pool (OPTIONS={'pool': ...}, CONN_MAX_AGE = 0)",
            )
        )
    return findings


# --- databases --------------------------------------------------------------------------------


def _pool_findings(threads: int) -> list[Finding]:
    """One line per pooled alias: its bound per process and its figures in this process."""
    figures = _drivers.pool_figures()
    findings = []
    for alias, db in _databases().items():
        size = _fleet.pool_size(db, threads)
        if size is None:
            continue
        now = figures.get(alias)
        seen = (
            "size {size}, idle {idle}, in use {in_use}, waits {waits}, timeouts {timeouts}".format(
                **{"waits": 0, "timeouts": 0, **now}
            )
            if now
            else "not opened yet"
        )
        findings.append(
            Finding(
                "info",
                f"pool {alias!r}",
                f"{db.get('ENGINE')}: up to {size} session(s) per process with {threads}"
                f" thread(s); in this process: {seen}",
            )
        )
    return findings


def _server_key(alias: str) -> tuple[str, str]:
    from django.db import connections

    s = connections.settings[alias]
    engine = str(s["ENGINE"])
    vendor = {"postgresql": "postgresql", "mysql": "mysql", "sqlite3": "sqlite"}.get(
        engine.rsplit(".", 1)[-1], engine
    )
    if vendor == "sqlite":
        return vendor, str(s.get("NAME"))
    default_port = {"postgresql": "5432", "mysql": "3306"}.get(vendor, "")
    return vendor, f"{s.get('HOST') or 'localhost'}:{s.get('PORT') or default_port}"


def _databases() -> dict[str, dict[str, Any]]:
    from django.db import connections

    return {alias: connections.settings[alias] for alias in connections.settings}


def _this_host(processes: int, threads: int) -> list[_fleet.Group]:
    """The single-host report's deployment: a fleet of one host."""
    return [_fleet.Group("this host", processes=processes, threads=threads)]


def _error_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": ")


def inspect_server(
    vendor: str,
    address: str,
    aliases: list[str],
    processes: int,
    threads: int,
    poolers: dict[str, _pooler.Pooler] | None = None,
) -> tuple[DatabaseServer, list[Finding]]:
    """Connect to one server through ``aliases`` and compare demand with its limits.

    ``poolers``: PgBouncers already read (``--pooler-console``), by "host:port";
    otherwise a PgBouncer in front of a PostgreSQL server is looked for.
    """
    from django.db import connections

    by_database: dict[str, str] = {}
    for alias in aliases:
        by_database.setdefault(str(connections.settings[alias].get("NAME")), alias)
    server = DatabaseServer(vendor, address, aliases, list(by_database))
    topic = f"{vendor} {address}"
    try:
        server.max_connections = _sessions.max_connections(aliases[0])
        for name, alias in by_database.items():
            groups = _sessions.session_groups(alias) or {}
            server.sessions += [(c, s, n, name) for (c, s), n in sorted(groups.items())]
    except Exception as exc:
        server.error = _error_line(exc)
        names = ", ".join(map(repr, aliases))
        return server, [
            Finding(
                "error",
                topic,
                f"cannot connect (aliases {names}): {server.error}",
                "check HOST/PORT/NAME/USER in DATABASES and that the server is up",
            )
        ]
    if server.max_connections is None:
        return server, [Finding("ok", topic, "SQLite: reachable, no server sessions to count")]
    try:
        server.pooler = _find_pooler(vendor, address, aliases, poolers or {})
    except _pooler.ConsoleError as exc:
        declared = _declared_modes()
        return server, [
            _demand_finding(server, processes, threads),
            Finding(
                "warning" if any(a in declared for a in aliases) else "info",
                f"pgbouncer {address}",
                f"something other than PostgreSQL answers there, but no PgBouncer console: {exc}",
                f"add USER {connections.settings[aliases[0]].get('USER')!r} to stats_users in"
                " pgbouncer.ini, or pass --pooler-console postgresql://USER@HOST:PORT/pgbouncer",
            ),
        ]
    if server.pooler is None:
        return server, [_demand_finding(server, processes, threads)]
    return server, _behind_pooler(server, processes, threads)


def _demand_finding(server: DatabaseServer, processes: int, threads: int) -> Finding:
    """This host's worst case straight on the server, against ``max_connections``."""
    assert server.max_connections is not None
    databases = _databases()
    server.demand, server.demand_formula = _fleet.demand(
        _this_host(processes, threads), databases, server.aliases
    )
    now = sum(n for _, _, n, _ in server.sessions)
    verdict = "ok" if server.demand <= server.max_connections else "exceeds"
    finding = Finding(
        "ok" if verdict == "ok" else "error",
        f"{server.vendor} {server.address}",
        f"demand {server.demand_formula} = {server.demand} of max_connections"
        f" {server.max_connections}: {verdict} ({now} session(s) of other clients now)",
    )
    if verdict != "ok":
        finding.hint = (
            "fewer processes/threads or aliases, a bouncer (PgBouncer, ProxySQL), or a higher"
            " max_connections"
        )
    return finding


def _declared_modes() -> dict[str, str]:
    return _pooler.declared_modes(_databases(), conf.raw_value("POOLER"))


def _find_pooler(
    vendor: str, address: str, aliases: list[str], given: dict[str, _pooler.Pooler]
) -> _pooler.Pooler | None:
    """The PgBouncer at ``address``; None for a database server. Raises ``ConsoleError``."""
    if address in given:
        return given[address]
    if vendor != "postgresql":
        return None
    declared = _declared_modes()
    return _pooler.detect(aliases[0], declared=any(a in declared for a in aliases))


def _behind_pooler(server: DatabaseServer, processes: int, threads: int) -> list[Finding]:
    """This host's demand through the pooler, limit by limit, and what the console says."""
    pooler = server.pooler
    assert pooler is not None
    topic = f"pgbouncer {server.address}"
    behind = {pool.server: server.max_connections for pool in pooler.pools.values()}
    keys = dict.fromkeys(server.aliases, (server.vendor, server.address))
    groups = _this_host(processes, threads)
    server.limits = _fleet.budget(groups, _databases(), keys, behind, {server.address: pooler})
    findings = [
        Finding(level, topic, message, hint)
        for level, message, hint in pooler_findings(pooler, server.aliases, _declared_modes())
    ]
    for row in server.limits:
        formula = f"{row.formula} = " if row.formula else ""
        note = f" ({row.note})" if row.note else ""
        findings.append(
            Finding(
                "error" if row.exceeded else "ok",
                topic,
                f"{row.target.strip()}: demand {formula}{row.demand} of {row.limit_name}"
                f" {row.limit if row.limit is not None else 'unknown'}: {row.verdict}{note}",
                "fewer processes/threads or a higher limit" if row.exceeded else "",
            )
        )
        if row.limit_name == "max_connections":
            server.demand, server.demand_formula = row.demand, row.formula
    return findings


def _servers_of_databases() -> dict[tuple[str, str], list[str]]:
    from django.db import connections

    servers: dict[tuple[str, str], list[str]] = {}
    for alias in connections.settings:
        servers.setdefault(_server_key(alias), []).append(alias)
    return servers


# --- the fleet ------------------------------------------------------------------------------


class InputError(ValueError):
    """Bad input for the doctor (fleet file, console URL...): one line, exit code 2."""


@dataclass
class FleetReport:
    """``forksafe doctor --fleet``: every limit on the way and the fleet's worst case on it."""

    fleet: str
    groups: list[_fleet.Group]
    limits: list[_fleet.Row]

    @property
    def exit_code(self) -> int:
        """0 when every hard limit holds, 1 when one is exceeded."""
        return 1 if any(row.exceeded for row in self.limits) else 0

    def render(self) -> str:
        """The table for a terminal."""
        hosts = sum(g.hosts for g in self.groups)
        head = f"forksafe doctor --fleet {self.fleet}: {len(self.groups)} group(s), {hosts} host(s)"
        return f"{head}\n\n{_fleet.render(self.limits, self.groups)}"

    def to_json(self) -> str:
        """The report as one JSON object (with ``exit_code``)."""
        limits = [{**asdict(r), "verdict": r.verdict, "exceeded": r.exceeded} for r in self.limits]
        data = {"fleet": self.fleet, "groups": [asdict(g) for g in self.groups], "limits": limits}
        return json.dumps({**data, "exit_code": self.exit_code}, indent=2)


def run_fleet(path: str, poolers: dict[str, _pooler.Pooler] | None = None) -> FleetReport:
    """The worst case of the fleet described in the file at ``path`` against every limit.

    Reads ``max_connections`` from each database server and the limits of each
    PgBouncer in front of one (``poolers`` already read, by "host:port", or found
    as the single-host report finds them). Raises :class:`InputError` for a bad
    file, a server that does not answer or a console that does not.
    """
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    databases = _databases()
    try:
        groups = _fleet.load(path, list(databases))
    except _fleet.FleetError as exc:
        raise InputError(str(exc)) from None
    limits: dict[str, int | None] = {}
    found: dict[str, _pooler.Pooler] = {}
    servers: dict[str, tuple[str, str]] = {}
    for (vendor, address), aliases in _servers_of_databases().items():
        if vendor == "sqlite":
            continue
        try:
            limit = _sessions.max_connections(aliases[0])
            pooler = _find_pooler(vendor, address, aliases, poolers or {})
        except _pooler.ConsoleError as exc:
            raise InputError(
                f"pgbouncer {address}: its admin console does not answer: {exc}"
            ) from None
        except Exception as exc:
            raise InputError(f"{vendor} {address}: cannot connect: {_error_line(exc)}") from None
        servers.update(dict.fromkeys(aliases, (vendor, address)))
        if pooler is None:
            limits[address] = limit
            continue
        found[address] = pooler
        for alias in aliases:  # the server behind the pools this deployment uses
            pool = pooler.pools.get(str(databases[alias].get("NAME"))) or pooler.pools.get("*")
            if pool is not None:
                limits[pool.server] = limit
    return FleetReport(path, groups, _fleet.budget(groups, databases, servers, limits, found))


def read_pooler_console(url: str) -> dict[str, _pooler.Pooler]:
    """The PgBouncer whose admin console is at ``url``, by its "host:port".

    Raises :class:`InputError` when ``url`` is not a PostgreSQL URL, no alias
    connects to its host and port, or no console answers there.
    """
    from django.db import connections

    parts = urllib.parse.urlsplit(url)
    if parts.scheme.partition("+")[0] not in ("postgresql", "postgres") or not parts.hostname:
        raise InputError(
            f"--pooler-console: expected postgresql://USER@HOST:PORT/pgbouncer, not {url!r}"
        )
    aliases = [a for a in connections.settings if _server_key(a)[0] == "postgresql"]
    addresses = sorted({_server_key(a)[1] for a in aliases})
    params = {
        "host": parts.hostname,
        "port": parts.port or _pooler.PGBOUNCER_PORT,
        "user": urllib.parse.unquote(parts.username or "") or None,
        "password": urllib.parse.unquote(parts.password or "") or None,
    }
    address = f"{params['host']}:{params['port']}"
    if address not in addresses:
        raise InputError(
            f"--pooler-console {address}: no PostgreSQL alias in DATABASES connects there"
            f" ({', '.join(addresses) or 'none is PostgreSQL'})"
        )
    alias = next(a for a in aliases if _server_key(a)[1] == address)
    try:
        database = connections[alias].Database  # type: ignore[attr-defined]
        return {address: _pooler.read_console(database, params)}
    except (_pooler.ConsoleError, LookupError) as exc:
        raise InputError(
            f"--pooler-console {address}: no PgBouncer console answers: {exc}"
        ) from None


# --- entry points -----------------------------------------------------------------------------


def run_doctor(
    processes: int | None = None,
    threads: int | None = None,
    *,
    poolers: dict[str, _pooler.Pooler] | None = None,
) -> Report:
    """Examine settings, environment and databases; returns the :class:`Report`.

    ``processes`` / ``threads``: the deployment's worker processes and threads
    per process (default: from the environment, else 1). Sets Django up if
    needed (``DJANGO_SETTINGS_MODULE``). Raises ``ValueError`` for a count
    below 1. Connects from the calling thread and closes what it opened.
    ``poolers``: PgBouncers already read (:func:`read_pooler_console`).
    """
    for name, value in (("processes", processes), ("threads", threads)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    p, t, sizing = detect_sizing(processes, threads)
    servers = detect_servers()
    hooks = _fork.hooks_installed()
    current = multiprocessing.get_start_method(allow_none=True)
    default = multiprocessing.get_all_start_methods()[0]
    findings = _environment_findings(hooks, servers)
    findings.append(_start_method_finding(current, default))
    findings += _check_findings()
    findings += _asgi_findings()
    findings += _pool_findings(t)
    findings += _gevent_findings()
    databases = []
    for (vendor, address), aliases in _servers_of_databases().items():
        server, server_findings = inspect_server(vendor, address, aliases, p, t, poolers)
        databases.append(server)
        findings += server_findings
    return Report(
        processes=p,
        threads=t,
        sizing=sizing,
        hooks_installed=hooks,
        options={k: conf.get(k) for k in sorted(conf.DEFAULTS)},
        servers=servers,
        start_method=current,
        default_start_method=default,
        databases=databases,
        findings=findings,
    )


def positive_int(text: str) -> int:
    """argparse ``type`` for ``--processes``/``--threads``: a whole number >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``forksafe doctor`` and ``manage.py forksafe_doctor``."""
    parser.add_argument(
        "--processes",
        type=positive_int,
        metavar="N",
        help="worker processes of the deployment (default: from UWSGI_PROCESSES,"
        " GUNICORN_CMD_ARGS or WEB_CONCURRENCY, else 1)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="threads per worker process (default: from UWSGI_THREADS or GUNICORN_CMD_ARGS,"
        " else 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--fleet",
        metavar="FILE",
        help="worst-case sessions of the groups of hosts in FILE (TOML, or JSON for .json)"
        " against every pooler and database limit, as a table",
    )
    parser.add_argument(
        "--pooler-console",
        metavar="URL",
        help="PgBouncer's admin console, e.g. postgresql://stats@HOST:6432/pgbouncer"
        " (default: asked with the alias's own USER/PASSWORD)",
    )


def run_options(options: dict[str, Any]) -> Report | FleetReport:
    """Run what the parsed options ask for; :class:`InputError` for bad input."""
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    url = options.get("pooler_console")
    poolers = read_pooler_console(url) if url else {}
    if options.get("fleet"):
        if options.get("processes") or options.get("threads"):
            raise InputError(
                "--fleet takes the counts from the file: leave out --processes/--threads"
            )
        return run_fleet(options["fleet"], poolers)
    return run_doctor(options.get("processes"), options.get("threads"), poolers=poolers)


class _Parser(argparse.ArgumentParser):
    """Bad options: one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``forksafe doctor``; returns the exit code (0 fine, 1 problems, 2 usage).

    The current directory is put on ``sys.path`` (as ``manage.py`` has its own)
    so that ``--settings mysite.settings`` imports from the project.
    """
    parser = _Parser(prog="forksafe doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", metavar="MODULE", help="default: DJANGO_SETTINGS_MODULE")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        parser.error("no Django settings: pass --settings MODULE or set DJANGO_SETTINGS_MODULE")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        import django

        django.setup()
    except Exception as exc:
        parser.error(
            f"cannot load settings {os.environ['DJANGO_SETTINGS_MODULE']!r}: {_error_line(exc)}"
        )
    try:
        report = run_options(vars(args))
    except InputError as exc:
        parser.error(str(exc))
    sys.stdout.write(report.to_json() + "\n" if args.json else report.render())
    return report.exit_code


# --- PgBouncer (forksafe._pooler) -----------------------------------------------------------


def pooler_findings(
    pooler: _pooler.Pooler, aliases: list[str], declared: dict[str, str]
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
            for problem in _pooler.settings_problems(alias, db, pool.pool_mode):
                check_id = checks.POOLER_PROBLEM_IDS[problem.kind]
                out.append(("warning", f"{check_id}: {problem.message}", problem.fix))
        out += _pooler_timeouts(alias, db, pooler, pool)
    return out


def _pooler_timeouts(
    alias: str, db: dict[str, Any], pooler: _pooler.Pooler, pool: _pooler.Pool
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
