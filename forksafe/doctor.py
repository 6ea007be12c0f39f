"""``forksafe doctor``: is this deployment's database set-up safe across fork and threads?

Run it where the application runs (same settings, same environment)::

    forksafe doctor --settings mysite.settings --processes 4 --threads 8
    python manage.py forksafe_doctor --processes 4 --threads 8 --json

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
  counts its own size per process) -- against ``max_connections``.

Exit code 0 when nothing is wrong, 1 when something is (a check error or
warning, a database that does not answer, demand above ``max_connections``),
2 for bad options. Everything runs in the calling thread of one process; the
database connections it opens are its own and closed before it returns.
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
from dataclasses import asdict, dataclass, field
from typing import NoReturn

from forksafe import _sessions, conf

__all__ = ["DatabaseServer", "Finding", "Report", "add_arguments", "main", "run_doctor"]

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
    uwsgi_env = sorted(k for k in os.environ if k.startswith("UWSGI_"))
    found = {
        "uwsgi": (
            "running (inside uWSGI)"
            if _installed("uwsgi")
            else f"configured by environment ({', '.join(uwsgi_env)})"
            if uwsgi_env
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

    Given values win; otherwise ``UWSGI_PROCESSES``/``UWSGI_THREADS``,
    ``GUNICORN_CMD_ARGS`` (``--workers``, ``--threads``), ``WEB_CONCURRENCY``; else 1.
    """
    gunicorn = _gunicorn_args()
    p_sources = [
        ("--processes", processes),
        ("UWSGI_PROCESSES", _env_int("UWSGI_PROCESSES")),
        ("UWSGI_WORKERS", _env_int("UWSGI_WORKERS")),
        ("GUNICORN_CMD_ARGS --workers", gunicorn.get("workers")),
        ("WEB_CONCURRENCY", _env_int("WEB_CONCURRENCY")),
    ]
    t_sources = [
        ("--threads", threads),
        ("UWSGI_THREADS", _env_int("UWSGI_THREADS")),
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
    if servers["uwsgi"].startswith(("running", "configured")):
        findings.append(
            Finding(
                "info",
                "uwsgi",
                "uWSGI forks in C: forksafe detaches the workers' inherited connections"
                " through uwsgidecorators' postfork chain, which needs 'master = true'",
            )
        )
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

    from forksafe.checks import forksafe_checks

    findings = []
    for message in forksafe_checks():
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


# --- databases --------------------------------------------------------------------------------


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


def _pool_size(alias: str, threads: int) -> int | None:
    """Sessions one process's native pool of ``alias`` can hold, or None without a pool.

    ``min_size`` are open from the start; beyond that the pool grows only to what the
    threads check out at once, up to ``max_size`` (psycopg_pool: 4 and ``min_size``).
    """
    from django.db import connections

    options = connections.settings[alias].get("OPTIONS") or {}
    pool = options.get("pool") if isinstance(options, dict) else None
    if not pool:
        return None
    pool = pool if isinstance(pool, dict) else {}
    min_size = int(pool.get("min_size", 4))
    max_size = int(pool.get("max_size") or min_size)
    return max(min_size, min(threads, max_size))


def _demand(aliases: list[str], processes: int, threads: int) -> tuple[int, str]:
    """Worst-case sessions of the deployment on one server, and how that was computed."""
    plain = [a for a in aliases if _pool_size(a, threads) is None]
    total = processes * threads * len(plain)
    parts = [f"{processes} x {threads} x {len(plain)} alias(es)"] if plain else []
    for alias in aliases:
        size = _pool_size(alias, threads)
        if size is not None:
            total += processes * size
            parts.append(f"{processes} x pool {size} ({alias!r})")
    return total, " + ".join(parts)


def _error_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": ")


def inspect_server(
    vendor: str, address: str, aliases: list[str], processes: int, threads: int
) -> tuple[DatabaseServer, list[Finding]]:
    """Connect to one server through ``aliases`` and compare demand with ``max_connections``."""
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
    server.demand, server.demand_formula = _demand(aliases, processes, threads)
    now = sum(n for _, _, n, _ in server.sessions)
    verdict = "ok" if server.demand <= server.max_connections else "exceeds"
    finding = Finding(
        "ok" if verdict == "ok" else "error",
        topic,
        f"demand {server.demand_formula} = {server.demand} of max_connections"
        f" {server.max_connections}: {verdict} ({now} session(s) of other clients now)",
    )
    if verdict != "ok":
        finding.hint = (
            "fewer processes/threads or aliases, a bouncer (PgBouncer, ProxySQL), or a higher"
            " max_connections"
        )
    return server, [finding]


def _servers_of_databases() -> dict[tuple[str, str], list[str]]:
    from django.db import connections

    servers: dict[tuple[str, str], list[str]] = {}
    for alias in connections.settings:
        servers.setdefault(_server_key(alias), []).append(alias)
    return servers


# --- entry points -----------------------------------------------------------------------------


def run_doctor(processes: int | None = None, threads: int | None = None) -> Report:
    """Examine settings, environment and databases; returns the :class:`Report`.

    ``processes`` / ``threads``: the deployment's worker processes and threads
    per process (default: from the environment, else 1). Sets Django up if
    needed (``DJANGO_SETTINGS_MODULE``). Raises ``ValueError`` for a count
    below 1. Connects from the calling thread and closes what it opened.
    """
    for name, value in (("processes", processes), ("threads", threads)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    from forksafe import _fork

    p, t, sizing = detect_sizing(processes, threads)
    servers = detect_servers()
    hooks = _fork.hooks_installed()
    current = multiprocessing.get_start_method(allow_none=True)
    default = multiprocessing.get_all_start_methods()[0]
    findings = _environment_findings(hooks, servers)
    findings.append(_start_method_finding(current, default))
    findings += _check_findings()
    databases = []
    for (vendor, address), aliases in _servers_of_databases().items():
        server, server_findings = inspect_server(vendor, address, aliases, p, t)
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
    report = run_doctor(args.processes, args.threads)
    sys.stdout.write(report.to_json() + "\n" if args.json else report.render())
    return report.exit_code
