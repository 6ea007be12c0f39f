"""A keep-alive burst at gunicorn's gevent worker (``-k gevent``), measured from the server.

Used by ``tests/test_gevent.py`` and ``benchmarks/gevent_bench.py``: one gevent worker
serves ``requests`` from ``clients`` concurrent keep-alive clients (one greenlet each);
the clients hang up, the sessions the burst used that the server still lists are
counted, and the server is stopped with ``SIGTERM``; then the server's count of
abandoned sessions since the start. Django must be configured in the calling process
for the same database (the counts are asked through its ``default`` alias).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # `python gevent_burst.py`: make `uwsgi_examples` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forksafe._sessions import list_sessions
from tests.harness.sessions import abandoned_after, settled_abandoned
from uwsgi_examples.load import LoadResult, fire_keepalive
from uwsgi_examples.run import Server, migrate

__all__ = ["POOL_MAX", "GeventRun", "main", "measure", "still_open"]

POOL_MAX = 8  # exampleproject/settings.py, EXAMPLE_POOL=1


@dataclass
class GeventRun:
    """One measured burst."""

    result: LoadResult
    used: set[int] = field(default_factory=set)  # sessions the burst's requests ran on
    left: set[int] = field(default_factory=set)  # of those, still open after the clients left
    abandoned: int = 0  # ended without a goodbye, from the start to after the SIGTERM stop
    status: int | None = None  # the server's exit status after SIGTERM
    log: str = ""


def still_open(backends: set[int], *, expected: int, timeout: float = 5.0) -> set[int]:
    """The ``backends`` the server still lists, once at most ``expected`` or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = list_sessions()
        assert sessions is not None, "SQLite has no sessions to list"
        left = backends & {s.id for s in sessions}
        if len(left) <= expected or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def measure(
    database_url: str,
    *,
    forksafe: str,
    preload: bool = True,
    pool: bool = False,
    requests: int = 300,
    clients: int = 20,
    conn_max_age: int = 60,
    expect_left: int = 0,
) -> GeventRun:
    """Serve one burst (see the module docstring); ``forksafe``: ``EXAMPLE_FORKSAFE``.

    ``pool``: ``EXAMPLE_POOL=1`` (``max_size`` 8; Django's native pool with psycopg 3,
    ``forksafe.backends`` with the other drivers). ``expect_left``: how many sessions
    may stay after the burst (the wait for the others to end stops there).
    """
    env = {
        "EXAMPLE_WORKER_CLASS": "gevent",
        "EXAMPLE_PRELOAD": "1" if preload else "0",
        "EXAMPLE_CONN_MAX_AGE": str(conn_max_age),
    }
    if pool:
        env["EXAMPLE_POOL"] = "1"
    before = settled_abandoned()
    server = Server("gunicorn", database_url, forksafe=forksafe, processes=1, env=env)
    with server:
        result = fire_keepalive(server.url, requests=requests, clients=clients, timeout=10)
        run = GeventRun(result)
        run.used = result.backends - {r["loader_backend"] for r in result.responses}
        run.left = still_open(run.used, expected=expect_left)
        run.status = server.stop(signum=signal.SIGTERM, timeout=20)
        run.log = server.log()
    run.abandoned = abandoned_after(before, timeout=2) - before
    return run


def main(argv: list[str] | None = None) -> int:
    """``python gevent_burst.py --database URL [--json]``: plain Django, then forksafe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, metavar="URL")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON list of rows")
    args = parser.parse_args(argv)
    if args.database.startswith("sqlite"):
        parser.error("--database postgresql://... or mysql://...: the rows count server sessions")
    import django

    from forksafe._urls import configure_django

    configure_django(args.database)
    django.setup()
    migrate(args.database)
    rows = []
    for mode, forksafe in (("plain", "0"), ("forksafe", "1")):
        # No preload_app: with it, plain Django's greenlets share the arbiter's wrapper and
        # every request fails (Django refuses a wrapper of another thread).
        run = measure(
            args.database,
            forksafe=forksafe,
            preload=False,
            requests=args.requests,
            clients=args.clients,
        )
        rows.append(
            {
                "mode": mode,
                "errors": len(run.result.errors),
                "sessions": len(run.used),
                "left": len(run.left),
                "abandoned": run.abandoned,
            }
        )
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
