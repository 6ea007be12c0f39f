"""Bursts of requests at the example project under an ASGI server, counted by the database.

    python asgi_burst.py --database postgresql://postgres@127.0.0.1/test
                         [--server uvicorn] [--requests 300] [--concurrency 8] [--json]

For plain Django and for forksafe (the ``forksafe`` app, ``LifespanMiddleware``), one
server each, ``CONN_MAX_AGE=60``: a burst at each view -- ``/`` (sync), ``/async``
(``sync_to_async``), ``/async-unsafe`` (``thread_sensitive=False``) -- then, with
psycopg 3, the same under Django's native pool (``CONN_MAX_AGE=0``). Per row: the
distinct server sessions that answered, the sessions still open after the burst
(beyond those open when the server was ready), and after a graceful shutdown the
sessions the server counted as abandoned (``pg_stat_database.sessions_abandoned``,
MariaDB's ``Aborted_clients``, which counts the whole server). The tests
(``tests/test_asgi.py``) and ``forksafe demo`` use :func:`measure`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # `python asgi_burst.py`: make `uwsgi_examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uwsgi_examples.load import LoadResult, fire
from uwsgi_examples.run import Server, migrate

__all__ = ["VIEWS", "Run", "measure", "measure_server", "table"]

#: The example's views, by path.
VIEWS = {
    "": "sync view",
    "async": "async view + sync_to_async",
    "async-unsafe": "sync_to_async(thread_sensitive=False)",
    "to-thread": "asyncio.to_thread",
}


@dataclass
class Run:
    """One server's life: what each burst left open, and what its shutdown abandoned."""

    config: str
    mode: str
    left: dict[str, int] = field(default_factory=dict)
    results: dict[str, LoadResult] = field(default_factory=dict)
    left_after_stop: int = -1
    abandoned: int | None = None
    status: int | None = None
    log: str = ""

    def errors(self) -> list[str]:
        return [e for r in self.results.values() for e in r.errors]

    def summary(self) -> str:
        lines = [
            f"{self.config} ({self.mode}): left {self.left}, after stop"
            f" {self.left_after_stop}, abandoned {self.abandoned}, exit status {self.status}"
        ]
        lines += [f"/{path}: {r.summary()}" for path, r in self.results.items()]
        return "\n".join(lines) + "\n" + self.log[-3000:]


def _abandoned_settled(timeout: float = 10.0) -> int | None:
    """The server's abandoned-session count once it stopped moving for 0.4 s."""
    from forksafe._sessions import abandoned_sessions

    last = abandoned_sessions()
    deadline = time.monotonic() + timeout
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.4)
        now = abandoned_sessions()
        if now == last:
            break
        last = now
    return last


def measure(
    config: str,
    database_url: str,
    paths: list[str],
    *,
    forksafe: str = "1",
    conn_max_age: int = 60,
    env: dict[str, str] | None = None,
    requests: int = 200,
    concurrency: int = 8,
    processes: int = 2,
) -> Run:
    """Start ``config``, fire a burst at each of ``paths`` in turn, stop it gracefully.

    Django must be set up in this process with ``default`` on the same database
    (the counts come from there). See :func:`measure_server` for what is counted.
    """
    env = {"EXAMPLE_CONN_MAX_AGE": str(conn_max_age), **(env or {})}
    server = Server(config, database_url, forksafe=forksafe, processes=processes, env=env)
    mode = "plain" if forksafe == "0" else "forksafe"
    return measure_server(server, paths, mode=mode, requests=requests, concurrency=concurrency)


def measure_server(
    server: Server,
    paths: list[str],
    *,
    mode: str = "forksafe",
    requests: int = 200,
    concurrency: int = 8,
    signum: int | None = None,
    group: bool = False,
) -> Run:
    """Start ``server`` (not started yet), fire a burst at each of ``paths``, stop it with
    ``signum`` (default: its :attr:`~Server.graceful_signal`; ``group``: to its whole
    process group, as Ctrl-C does).

    Django must be set up in this process with ``default`` on the server's database.
    ``left[path]``: sessions open once that burst is over beyond those open before it
    (the application's loader may hold one on purpose, an earlier burst's executor its
    own); ``left_after_stop``: sessions open after the stop beyond those before the
    start; ``abandoned``: counted by the database server from start to after the stop
    (None for SQLite).
    """
    from django.db import connections

    from forksafe._sessions import quiet_sessions, settle_sessions

    connections.close_all()
    run = Run(server.config, mode)
    baseline = quiet_sessions()
    abandoned_before = _abandoned_settled()
    with server:
        for path in paths:
            before = quiet_sessions()
            run.results[path] = fire(server.url + path, requests, concurrency, timeout=20)
            # Request threads end a moment after their answer: take a stable count.
            now = quiet_sessions(timeout=3.0, stable_for=0.3)
            run.left[path] = -1 if now is None or before is None else now - before
        signum = server.graceful_signal if signum is None else signum
        run.status = server.stop(signum=signum, group=group)
        run.log = server.log()
    if baseline is not None:
        n = settle_sessions(baseline, timeout=10, at_most=True)
        run.left_after_stop = (n or 0) - baseline
    abandoned_after = _abandoned_settled()
    if abandoned_before is not None and abandoned_after is not None:
        run.abandoned = abandoned_after - abandoned_before
    return run


def table(
    database_url: str, *, config: str = "uvicorn", requests: int = 300, concurrency: int = 8
) -> list[dict[str, Any]]:
    """The rows of the README's ASGI table (one dict per mode and view)."""
    from forksafe._urls import split_url

    settings: list[tuple[str, int, dict[str, str]]] = [("CONN_MAX_AGE=60", 60, {})]
    if database_url.startswith("postgres") and split_url(database_url)[1] == "psycopg":
        settings.append(("native pool", 0, {"EXAMPLE_POOL": "1"}))
    runs: list[tuple[str, Run]] = []
    # One server per row: a plain burst's leaked sessions, collected by the GC at
    # some point of the next burst, would blur the next row's count.
    for setting, conn_max_age, env in settings:
        for mode in ("0", "1"):
            for path in ("", "async", "async-unsafe"):
                run = measure(
                    config,
                    database_url,
                    [path],
                    forksafe=mode,
                    conn_max_age=conn_max_age,
                    env=env,
                    requests=requests,
                    concurrency=concurrency,
                )
                runs.append((setting, run))
    rows = []
    for setting, run in runs:
        for path, result in run.results.items():
            rows.append(
                {
                    "setting": setting,
                    "mode": run.mode,
                    "view": VIEWS[path],
                    "errors": len(result.errors),
                    "sessions": len(result.backends),
                    "left": run.left[path],
                    "abandoned": run.abandoned,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=os.environ.get("DATABASE_URL"), required=False)
    parser.add_argument("--server", default="uvicorn", choices=("uvicorn", "daphne"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="one JSON list of rows")
    args = parser.parse_args(argv)
    if not args.database or args.database.startswith("sqlite"):
        parser.error("--database postgresql://... or mysql://...: the rows count server sessions")
    import django

    from forksafe._urls import configure_django

    configure_django(args.database)
    django.setup()
    migrate(args.database)
    rows = table(
        args.database, config=args.server, requests=args.requests, concurrency=args.concurrency
    )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{args.server}, {args.requests} requests, {args.concurrency} concurrent")
    print(
        "| setting | mode | view | errors | sessions used | left after the burst |"
        " abandoned at shutdown |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['mode']} | {r['view']} | {r['errors']} | {r['sessions']}"
            f" | {r['left']} | {r['abandoned']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
