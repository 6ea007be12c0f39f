"""gunicorn's gevent worker: plain Django vs forksafe vs a pool, from the server's side.

Run: ``python benchmarks/gevent_bench.py --database postgresql://postgres@127.0.0.1/test``
(and again with ``--database mysql+pymysql://root@127.0.0.1/test``).

The example project (``uwsgi_examples/exampleproject``) under ``gunicorn -k gevent``, one
worker, no ``preload_app`` (plain Django with it shares the arbiter's connection among all
greenlets: forksafe.W020): ``--requests`` requests from ``--clients`` concurrent keep-alive
clients (one greenlet each) at its sync view, then the clients hang up and the server is
stopped with ``SIGTERM`` (``uwsgi_examples/gevent_burst.py``). Rows:

* plain Django, ``CONN_MAX_AGE=60`` (``EXAMPLE_FORKSAFE=0``);
* plain Django, ``CONN_MAX_AGE=0`` (a connect per request);
* forksafe's gunicorn hooks, ``CONN_MAX_AGE=60`` (each greenlet closes its session when it ends);
* forksafe with a pool (``max_size`` 8): Django's native pool with psycopg 3,
  ``forksafe.backends`` with PyMySQL and psycopg2.

Rows are interleaved, one server per row in turn per round; the table shows the median
req/s, the most distinct sessions a burst used, the most sessions left open after the
clients hung up, and the most abandoned at the stop (MariaDB's count covers the server).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/gevent_bench.py`: the repository's modules
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: (row, EXAMPLE_FORKSAFE, CONN_MAX_AGE, pool)
ROWS = [
    ("plain Django, CONN_MAX_AGE=60", "0", 60, False),
    ("plain Django, CONN_MAX_AGE=0", "0", 0, False),
    ("forksafe, CONN_MAX_AGE=60", "hook", 60, False),
    ("forksafe + pool (max 8)", "hook", 0, True),
]


def bench(url: str, rounds: int, requests: int, clients: int) -> None:
    from uwsgi_examples.gevent_burst import POOL_MAX, measure

    n = range(len(ROWS))
    rates: dict[int, list[float]] = {i: [] for i in n}
    used: dict[int, list[int]] = {i: [] for i in n}
    left: dict[int, list[int]] = {i: [] for i in n}
    abandoned: dict[int, list[int]] = {i: [] for i in n}
    errors: dict[int, int] = dict.fromkeys(n, 0)
    for r in range(rounds):
        # Interleaved, and each round starts at another row (what the server went through
        # just before a row -- 300 sessions ending -- is not always the same row's burden).
        for i in [(r + k) % len(ROWS) for k in n]:
            _name, forksafe, conn_max_age, pool = ROWS[i]
            expect = POOL_MAX if pool else 0 if forksafe != "0" or conn_max_age == 0 else clients
            run = measure(
                url,
                forksafe=forksafe,
                preload=False,
                pool=pool,
                conn_max_age=conn_max_age,
                requests=requests,
                clients=clients,
                expect_left=expect,
            )
            errors[i] += len(run.result.errors)
            rates[i].append(run.result.requests_per_second)
            used[i].append(len(run.used))
            left[i].append(len(run.left))
            abandoned[i].append(run.abandoned)
    print(
        f"\ngunicorn -k gevent, 1 worker, {requests} requests x {clients}"
        f" keep-alive clients, medians of {rounds} interleaved rounds"
    )
    print(
        f"  {'row':<31} {'req/s':>7} {'min':>7} {'max':>7} {'sessions':>9} {'left':>5}"
        f" {'abandoned':>10} {'errors':>7}"
    )
    for i, (name, *_rest) in enumerate(ROWS):
        print(
            f"  {name:<31} {statistics.median(rates[i]):>7.0f} {min(rates[i]):>7.0f}"
            f" {max(rates[i]):>7.0f} {max(used[i]):>9} {max(left[i]):>5}"
            f" {max(abandoned[i]):>10} {errors[i]:>7}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, metavar="URL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args(argv)
    if min(args.rounds, args.requests, args.clients) < 1:
        parser.error("--rounds, --requests and --clients must be positive")

    from forksafe._urls import configure_django

    configure_django(args.database)
    import django

    django.setup()
    from django.db import connection

    if connection.vendor not in ("postgresql", "mysql"):
        parser.error("give a PostgreSQL or MariaDB/MySQL URL: sessions are counted on the server")
    from uwsgi_examples.run import migrate

    migrate(args.database)
    print(
        f"Python {sys.version.split()[0]}, Django {django.get_version()},"
        f" {connection.vendor} ({args.database.partition('://')[0]})"
    )
    bench(args.database, args.rounds, args.requests, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
