"""``forksafe demo``: run the scenarios, plain Django vs forksafe, and print what was measured.

Every figure comes from a real run: each scenario is a fresh interpreter
(``python -m forksafe.demo._scenarios``) that forks, starts threads or a process
pool for real and asks the database server which session answered; the uWSGI
rows start real uWSGI servers (``uwsgi_examples/``) and fire real requests.
Without ``--database`` a temporary SQLite file is used.

This package is the demo's own: the scenarios (``_scenarios``), the plot
(``_plot``) and this command line. Nothing else in forksafe imports it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, TextIO

from forksafe import _urls

# ``_scenarios`` is imported where it is used: ``python -m forksafe.demo._scenarios``
# imports this package first, and must not find its own module already imported.

__all__ = ["GROUPS", "main", "run_demo"]

#: What ``--only`` accepts.
GROUPS = ("fork", "pools", "threads", "queues", "uwsgi", "asgi", "gevent")
#: The scenario modes (``_scenarios.MODES``) that each table compares.
COMPARED_MODES = ("plain", "forksafe")
UWSGI_WORKERS = 4
UWSGI_REQUESTS = 200
UWSGI_CONCURRENCY = 16
UWSGI_TIMEOUT = 3.0  # seconds per request: a worker stuck on a shared session is an error
# The uWSGI rows run the example project that the server tests use (a Django project, its
# ini files, a server runner and a load generator); the wheel ships the library only.
UWSGI_NEEDS_CHECKOUT = (
    "the uWSGI rows run the example project of a forksafe checkout (uwsgi_examples/, not"
    " in the wheel); from a checkout: python3 dev.py demo --only uwsgi"
)


@dataclass(frozen=True)
class _Row:
    title: str
    scenario: str
    exit_path: str
    group: str
    # "pool": Django's native pool (PostgreSQL + psycopg 3, Django 5.1+); "redis": RQ + Redis
    needs: str = ""
    # Seconds the scenario may take. Plain rq.Worker can stall up to 60 s when it stops (RQ's
    # pub/sub race that forksafe.rq.Worker avoids: forksafe/rq.py, WorkerMixin.unsubscribe).
    timeout: float = 60


ROWS = (
    _Row("child runs ORM queries, exits", "fork", "orm", "fork"),
    _Row("child calls connections.close_all()", "fork", "close_all", "fork"),
    _Row("child exits via sys.exit()", "fork", "sys_exit", "fork"),
    _Row("child dies by an uncaught exception", "fork", "exception", "fork"),
    _Row("other parent thread holds a connection", "fork_thread", "sys_exit", "fork"),
    _Row("native pool: child calls close_pool()", "fork_pool", "close_pool", "fork", "pool"),
    _Row("native pool: child runs ORM queries", "fork_pool", "orm", "fork", "pool"),
    _Row("fork Pool(2) after the parent queried", "mp_pool", "orm", "pools"),
    _Row("50 short threads, joined (forksafe.Thread)", "threads", "orm", "threads"),
    _Row("50 threading.Threads (install(threads=True))", "threads_any", "orm", "threads"),
    _Row("8-worker executor, 200 tasks, shutdown()", "executor", "orm", "threads"),
    _Row("RQ worker, 5 jobs (a forked horse each)", "rq", "orm", "queues", "redis", 150),
)

_EXPLANATION = """\
'parent kept session': the parent's own server session still answers after the
child is gone. 'child own session': a querying child got a session of its own.
'left': server sessions left over once the child exited. forksafe runs with
close_before_fork=False here, to show that the parent's open connection survives.
RQ row: 'left' adds the sessions the server saw abandoned (no goodbye).
Thread rows: 'left' counts the sessions still open once the threads were joined
or the executor shut down, without gc.collect(); 'parent' is the main thread.
'-': not measured by this row, or not measurable on this database.
"""
_SQLITE_EXPLANATION = """\
SQLite has no server and no sessions: a session here is a handle on the database file.
Thread rows: 'left' counts the handles still open in the process once the threads
were joined or the executor shut down (from /proc/self/fd; without it, the open sqlite3
connections). A forked child's handles close with the child: nothing can be left ('-').
"""


def _yes_no(value: Any) -> str:
    return {True: "yes", False: "NO", None: "-"}.get(value, str(value))


def _cells(res: dict[str, Any]) -> list[str]:
    parent = _yes_no(res["parent_same_session"])
    if res["parent_error"]:
        parent = "NO (killed)"
    if res.get("thread_same_session") is not None:
        parent += "; thread " + _yes_no(res["thread_same_session"])
    if res.get("pool_lost") is not None:
        parent += f"; pool lost {res['pool_lost']}"
    left = res.get("sessions_left")
    shown = "-" if left is None else str(left)
    if res.get("abandoned") is not None:
        shown += f" ({res['abandoned']} abandoned)"
    return [parent, _yes_no(res["child_own_session"]), shown]


def _verdict(res: dict[str, Any]) -> str:
    """``ok``, or ``BROKEN`` when anything measured went wrong."""
    broken = (
        res["parent_error"]
        or res["child_error"]
        or res["parent_same_session"] is False
        or res["child_own_session"] is False
        or res.get("thread_same_session") is False
        or (res.get("pool_lost") or 0) > 0
        or (res.get("sessions_left") or 0) != 0
        or (res.get("abandoned") or 0) != 0
    )
    return "BROKEN" if broken else "ok"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _has_native_pool(url: str) -> bool:
    import django

    _, driver = _urls.split_url(url)
    return url.startswith("postgresql") and driver == "psycopg" and django.VERSION >= (5, 1)


class _Progress:
    """One line per finished step, or a single updating line when ``stream`` is a TTY."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.n = total, stream, 0
        self.tty = stream.isatty()
        self._start = 0.0

    def begin(self, label: str, *, same_step: bool = False) -> None:
        self.n += 0 if same_step else 1
        self._start = time.monotonic()
        if self.tty:
            line = f"[{self.n:2d}/{self.total}] {label} ..."
            self.stream.write("\r\033[K" + line[:119])
            self.stream.flush()

    def end(self, label: str, verdict: str) -> None:
        if not self.tty:
            seconds = time.monotonic() - self._start
            self.stream.write(f"[{self.n:2d}/{self.total}] {label}: {verdict} ({seconds:.1f} s)\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


# --- uWSGI ---------------------------------------------------------------------------------


def _uwsgi_examples(program: str = "uwsgi") -> tuple[Any, Any, str | None]:
    """(``uwsgi_examples.run``, ``uwsgi_examples.load``, why not); the modules are None
    when the example project or the ``program`` server is not there."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[2]
    try:
        import uwsgi_examples.load as load
        import uwsgi_examples.run as run
    except ImportError:
        if not (checkout / "uwsgi_examples" / "run.py").exists():
            return None, None, UWSGI_NEEDS_CHECKOUT
        sys.path.insert(0, str(checkout))
        import uwsgi_examples.load as load
        import uwsgi_examples.run as run
    reason: str | None = run.missing(program)
    if reason is not None:
        return None, None, reason
    return run, load, None


def _burst_rows(run: Any, script: str, database: str, *args: str) -> list[dict[str, Any]]:
    """Run the example project's ``script`` with ``--json`` in a fresh interpreter; its rows."""
    import json
    import subprocess

    cmd = [sys.executable, str(run.HERE / script), "--database", database, "--json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stderr.strip()[-2000:]}")
    rows: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rows


# --- ASGI ----------------------------------------------------------------------------------

ASGI_REQUESTS = 300
ASGI_CONCURRENCY = 8
#: Sessions each view may keep open on purpose: the loop's executor, the native pool.
_ASGI_KEPT = {"sync_to_async(thread_sensitive=False)": "executor"}

_ASGI_EXPLANATION = """\
uvicorn, the example project's asgi.py, CONN_MAX_AGE=60 (and with psycopg 3: Django's native
pool, CONN_MAX_AGE=0); {requests} requests, {concurrency} at a time, per view. 'sessions':
distinct server sessions that answered; 'left': still open after the burst (beyond the
loader's); 'abandoned': sessions the server saw end without a goodbye, from start to a
graceful shutdown. The executor's and the pool's sessions are kept on purpose.
"""


def _asgi_rows(run: Any, database: str) -> list[list[str]]:
    """Run ``uwsgi_examples/asgi_burst.py`` (plain vs forksafe under uvicorn); table rows."""
    rows = []
    args = ("--requests", str(ASGI_REQUESTS), "--concurrency", str(ASGI_CONCURRENCY))
    for r in _burst_rows(run, "asgi_burst.py", database, *args):
        kept = r["setting"] == "native pool" or r["view"] in _ASGI_KEPT
        ok = r["errors"] == 0 and (kept or r["left"] <= 0) and not r["abandoned"]
        rows.append(
            [
                r["setting"],
                r["view"],
                r["mode"],
                str(r["errors"]),
                str(r["sessions"]),
                str(r["left"]) + (" (kept)" if kept and r["left"] > 0 else ""),
                "-" if r["abandoned"] is None else str(r["abandoned"]),
                "ok" if ok else "BROKEN",
            ]
        )
    return rows


# --- gevent --------------------------------------------------------------------------------

GEVENT_REQUESTS = 300
GEVENT_CLIENTS = 20
_GEVENT_EXPLANATION = """\
gunicorn -k gevent, 1 worker, the example project (no preload_app), CONN_MAX_AGE=60:
{requests} requests from {clients} keep-alive clients (a greenlet each), then SIGTERM.
'sessions': server sessions the greenlets used; 'left': of those, still open once the clients
hung up; 'abandoned': sessions the server saw end without a goodbye, from start to after the
stop.
"""


def _gevent_rows(run: Any, database: str) -> list[list[str]]:
    """Run ``uwsgi_examples/gevent_burst.py`` (plain vs forksafe); table rows."""
    rows = []
    args = ("--requests", str(GEVENT_REQUESTS), "--clients", str(GEVENT_CLIENTS))
    for r in _burst_rows(run, "gevent_burst.py", database, *args):
        ok = r["errors"] == 0 and r["left"] == 0 and r["abandoned"] == 0
        cells = [r["mode"], r["errors"], r["sessions"], r["left"], r["abandoned"]]
        rows.append([*map(str, cells), "ok" if ok else "BROKEN"])
    return rows


def _uwsgi_row(run: Any, load: Any, database: str, mode: str, sqlite: bool) -> list[str]:
    """Start the preforked example under uWSGI, fire requests, stop it; one table row."""
    server = run.Server(
        "preforked",
        database,
        forksafe="1" if mode == "forksafe" else "0",
        processes=UWSGI_WORKERS,
    )
    try:
        server.start(timeout=60)
        res = load.fire(server.url, UWSGI_REQUESTS, UWSGI_CONCURRENCY, UWSGI_TIMEOUT)
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1:] or ["?"]
        return [mode, "-", "-", "-", "-", "-", f"FAILED: {last[0][:60]}"]
    finally:
        server.stop()
    ok = not res.errors and res.on_loader_session == 0 and not res.shared_backends
    # SQLite's "session id" is the handle's address: only "same as the master's" means anything.
    sessions = "-" if sqlite else str(len(res.backends))
    return [
        mode,
        f"{res.requests_per_second:.0f}",
        str(len(res.errors)),
        str(len(res.pids)),
        sessions,
        str(res.on_loader_session),
        "ok" if ok else "BROKEN",
    ]


# --- the demo ------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"forksafe demo: {message}", file=sys.stderr)
    return 2


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else text


def run_demo(
    database: str | None,
    out: TextIO = sys.stdout,
    *,
    only: tuple[str, ...] = GROUPS,
    plot: str | None = None,
    progress: TextIO = sys.stderr,
) -> int:
    """Run every demo row of the ``only`` groups that fits ``database``; print the tables.

    With ``plot``, only the sessions-over-time measurement runs and ``plot`` is
    written (a PNG). Everything runs in child processes (scenario interpreters,
    uWSGI servers); this process only prints. Returns the exit code: 0, or 2
    with one line on stderr for a bad URL, an unreachable database, a missing
    optional dependency or a scenario that failed.
    """
    tmp = None
    if database is None:
        fd, tmp = tempfile.mkstemp(prefix="forksafe-demo-", suffix=".sqlite3")
        os.close(fd)
        database = f"sqlite:///{tmp}"
    try:
        return _run(database, out, only, plot, progress)
    finally:
        if tmp is not None:
            os.unlink(tmp)


def _run(
    database: str, out: TextIO, only: tuple[str, ...], plot: str | None, progress: TextIO
) -> int:
    try:
        _urls.split_url(database)
    except ValueError as exc:
        return _fail(f"bad --database: {exc}")
    from forksafe.demo import _scenarios

    sqlite = database.startswith("sqlite")
    if plot is not None:
        from forksafe.demo import _plot

        if sqlite:
            return _fail(
                "--plot counts server sessions and SQLite has none: give --database"
                " postgresql://... or mysql://..."
            )
        missing = _plot.matplotlib_missing()
        if missing is not None:
            print(missing, file=sys.stderr)
            return 2
    shown = database.split("@")[-1] if "@" in database else database
    try:
        ping = _scenarios.run("ping", database, mode="plain", timeout=30)
    except RuntimeError as exc:
        return _fail(f"cannot use {shown}: {_first_line(str(exc).splitlines()[-1])}")
    if ping["parent_error"]:
        return _fail(f"cannot connect to {shown}: {_first_line(ping['parent_error'])}")
    out.write(f"forksafe demo on {shown}\n")
    if plot is not None:
        try:
            _plot.plot_timeline(database, plot, shown, out)
        except (RuntimeError, OSError) as exc:
            return _fail(f"--plot failed: {_first_line(str(exc).splitlines()[-1])}")
        return 0

    pool = _has_native_pool(database)
    queues_note = None
    if "queues" in only:
        queues_note = (
            "it counts the sessions the server saw abandoned, and SQLite has none: give"
            " --database postgresql://... or mysql://..."
            if sqlite
            else _scenarios.redis_answers()
        )
    rows = [
        r
        for r in ROWS
        if r.group in only
        and (r.needs != "pool" or pool)
        and (r.needs != "redis" or queues_note is None)
    ]
    run = load = None
    uwsgi_note = None
    if "uwsgi" in only:
        run, load, uwsgi_note = _uwsgi_examples()
    asgi_run = None
    asgi_note = None
    if "asgi" in only:
        if sqlite:
            asgi_note = (
                "the ASGI rows count server sessions: give --database postgresql://..."
                " or mysql://..."
            )
        else:
            asgi_run, _, asgi_note = _uwsgi_examples("uvicorn")
            if asgi_note is not None and "not installed" in asgi_note:
                asgi_note = "install uvicorn (pip install 'forksafe[asgi]')"
    gevent_run = None
    gevent_note = None
    if "gevent" in only:
        if sqlite:
            gevent_note = (
                "the gevent rows count server sessions: give --database postgresql://..."
                " or mysql://..."
            )
        elif importlib.util.find_spec("gevent") is None:
            gevent_note = "install gevent (pip install 'forksafe[gevent]')"
        else:
            gevent_run, _, gevent_note = _uwsgi_examples("gunicorn")
    steps = len(rows) * len(COMPARED_MODES) + (len(COMPARED_MODES) if run is not None else 0)
    steps += (asgi_run is not None) + (gevent_run is not None)
    bar = _Progress(steps, progress)
    table = [["scenario", "mode", "parent kept session", "child own session", "left", "verdict"]]
    uwsgi_table = [
        ["mode", "req/s", "errors", "worker pids", "sessions", "on master's session", "verdict"]
    ]
    asgi_table = [["setting", "view", "mode", "errors", "sessions", "left", "abandoned", "verdict"]]
    gevent_table = [["mode", "errors", "sessions", "left", "abandoned", "verdict"]]
    try:
        for row in rows:
            for mode in COMPARED_MODES:
                label = f"{row.title} ({mode})"
                bar.begin(label)
                res = _scenarios.run(
                    row.scenario, database, exit_path=row.exit_path, mode=mode, timeout=row.timeout
                )
                verdict = _verdict(res)
                table.append([row.title, mode, *_cells(res), verdict])
                bar.end(label, verdict)
        if run is not None:
            bar.begin("uWSGI: migrating the example project's tables")
            run.migrate(database)
            for mode in COMPARED_MODES:
                label = f"uWSGI, {UWSGI_WORKERS} workers, {UWSGI_REQUESTS} requests ({mode})"
                bar.begin(label, same_step=mode == COMPARED_MODES[0])
                cells = _uwsgi_row(run, load, database, mode, sqlite)
                uwsgi_table.append(cells)
                bar.end(label, cells[-1])
        if asgi_run is not None:
            label = "ASGI: uvicorn, plain and forksafe, a burst per view"
            bar.begin(label)
            asgi_table += _asgi_rows(asgi_run, database)
            verdicts = {
                mode: "BROKEN"
                if any(r[2] == mode and r[-1] == "BROKEN" for r in asgi_table)
                else "ok"
                for mode in COMPARED_MODES
            }
            bar.end(label, ", ".join(f"{mode} {v}" for mode, v in verdicts.items()))
        if gevent_run is not None:
            label = "gevent: gunicorn -k gevent, plain and forksafe"
            bar.begin(label)
            gevent_table += _gevent_rows(gevent_run, database)
            bar.end(label, ", ".join(f"{r[0]} {r[-1]}" for r in gevent_table[1:]))
    except RuntimeError as exc:
        bar.close()
        first = str(exc).strip().splitlines()
        return _fail(f"a scenario failed: {first[-1] if first else exc}")
    except Exception as exc:  # migrate: CalledProcessError, TimeoutExpired
        bar.close()
        return _fail(f"a scenario failed: {type(exc).__name__}: {_first_line(str(exc))}")
    bar.close()
    if len(table) > 1:
        out.write(_EXPLANATION + (_SQLITE_EXPLANATION if sqlite else "") + "\n")
        _table(table, out)
    if queues_note is not None:
        out.write(f"\nRQ row skipped: {queues_note}\n")
    if "uwsgi" in only:
        out.write(
            f"\nuWSGI, preforked ({UWSGI_WORKERS} workers, master = true): the master queries"
            " the database while\nloading the app, then forks; "
            f"{UWSGI_REQUESTS} requests, {UWSGI_CONCURRENCY} at a time,"
            f" {UWSGI_TIMEOUT:.0f} s timeout each.\n"
            "'sessions': distinct server sessions that answered; 'on master's session':"
            " answers a\nworker gave over the session it inherited from the master.\n\n"
        )
        if uwsgi_note is not None:
            out.write(f"skipped: {uwsgi_note}\n")
        else:
            _table(uwsgi_table, out)
    if "asgi" in only:
        out.write(
            "\n" + _ASGI_EXPLANATION.format(requests=ASGI_REQUESTS, concurrency=ASGI_CONCURRENCY)
        )
        out.write("\n")
        if asgi_note is not None:
            out.write(f"skipped: {asgi_note}\n")
        else:
            _table(asgi_table, out)
    if "gevent" in only:
        out.write(
            "\n"
            + _GEVENT_EXPLANATION.format(requests=GEVENT_REQUESTS, clients=GEVENT_CLIENTS)
            + "\n"
        )
        if gevent_note is not None:
            out.write(f"skipped: {gevent_note}\n")
        else:
            _table(gevent_table, out)
    return 0


def _groups(value: str) -> tuple[str, ...]:
    import argparse

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown group {', '.join(unknown) or repr(value)}; choose from {','.join(GROUPS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``forksafe demo``; returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="forksafe demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        metavar="URL",
        help="postgresql://user@host/db, mysql://root@host/db (+psycopg2 / +pymysql to pick"
        " the driver); default: a temporary SQLite file. The uWSGI rows create the example"
        " project's tables (contenttypes, auth) there.",
    )
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        type=_groups,
        default=GROUPS,
        help=f"comma-separated subset of {','.join(GROUPS)} (default: all; asgi needs uvicorn,"
        " a server database and a checkout of forksafe; gevent the same with gevent and"
        " gunicorn; uwsgi needs the uwsgi binary and a checkout of forksafe)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="instead of the tables: draw server sessions over time for 50 plain threads vs"
        " 50 forksafe.Threads (needs a server database and pip install 'forksafe[plot]')",
    )
    args = parser.parse_args(argv)
    return run_demo(args.database, only=args.only, plot=args.plot)
