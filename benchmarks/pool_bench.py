"""Connection pools under uvicorn, and the cost of one checkout + return.

Run: ``python benchmarks/pool_bench.py --database postgresql://postgres@127.0.0.1/test``
(and again with ``--database mysql://root@127.0.0.1/test``).

P1 -- the example project (``uwsgi_examples/exampleproject``) under uvicorn, one process,
the ``forksafe`` app installed, ``CONN_MAX_AGE=0``: ``--requests`` requests from
``--concurrency`` concurrent clients at its sync view (one query), per row:

* PostgreSQL: connect per request (psycopg 3 and psycopg2), Django's native pool (psycopg 3),
  forksafe's pool (psycopg2, ``forksafe.backends.postgresql``), django-db-connection-pool
  (psycopg2);
* MariaDB/MySQL: connect per request, forksafe's pool (``forksafe.backends.mysql``), for
  mysqlclient and PyMySQL; django-db-connection-pool (mysqlclient).

The pools hold at most 8 connections (``min_size`` 2; django-db-connection-pool:
``POOL_SIZE`` 8, no overflow). Rows are interleaved: each round starts one server per row
in turn; the table shows the median req/s of the rounds, the most distinct server sessions
a burst used, the sessions left open after it, and the sessions the server counted
abandoned from start to after the ``SIGTERM`` stop (MariaDB's count covers the server).

P2 (PostgreSQL, psycopg 3) -- µs per ``getconn()`` + ``putconn()`` of an idle connection,
one thread: forksafe's pool vs ``psycopg_pool.ConnectionPool``, the same connection
settings, medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/pool_bench.py`: the repository's modules
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: (row, driver, EXAMPLE_POOL) per vendor; EXAMPLE_POOL "" is connect per request.
ROWS = {
    "postgresql": [
        ("connect per request", "psycopg", ""),
        ("Django's native pool", "psycopg", "1"),
        ("connect per request", "psycopg2", ""),
        ("forksafe's pool", "psycopg2", "1"),
        ("django-db-connection-pool", "psycopg2", "dbcp"),
    ],
    "mysql": [
        ("connect per request", "mysqlclient", ""),
        ("forksafe's pool", "mysqlclient", "1"),
        ("django-db-connection-pool", "mysqlclient", "dbcp"),
        ("connect per request", "pymysql", ""),
        ("forksafe's pool", "pymysql", "1"),
    ],
}


def _url(url: str, driver: str) -> str:
    from forksafe._urls import split_url

    plain, _ = split_url(url)
    scheme, _, rest = plain.partition("://")
    return f"{scheme}+{driver}://{rest}"


def bench_p1(url: str, vendor: str, rounds: int, requests: int, concurrency: int) -> None:
    from uwsgi_examples.asgi_burst import measure

    rows = ROWS[vendor]
    rates: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    sessions: dict[int, list[int]] = {i: [] for i in range(len(rows))}
    left: dict[int, list[int]] = {i: [] for i in range(len(rows))}
    abandoned: dict[int, list[int]] = {i: [] for i in range(len(rows))}
    errors: dict[int, int] = dict.fromkeys(range(len(rows)), 0)
    for _ in range(rounds):
        for i, (_name, driver, pool) in enumerate(rows):
            run = measure(
                "uvicorn",
                _url(url, driver),
                [""],
                forksafe="1",
                conn_max_age=0,
                env={"EXAMPLE_POOL": pool} if pool else {},
                requests=requests,
                concurrency=concurrency,
                processes=1,
            )
            result = run.results[""]
            errors[i] += len(result.errors)
            rates[i].append(len(result.responses) / result.seconds if result.seconds else 0.0)
            sessions[i].append(len(result.backends))
            left[i].append(run.left[""])
            abandoned[i].append(run.abandoned or 0)
    print(
        f"\nP1 -- uvicorn, 1 process, {requests} requests x {concurrency} concurrent,"
        f" CONN_MAX_AGE=0, medians of {rounds} interleaved rounds"
    )
    print(
        f"  {'row':<27} {'driver':<12} {'req/s':>7} {'min':>7} {'max':>7}"
        f" {'sessions':>9} {'left':>5} {'abandoned':>10} {'errors':>7}"
    )
    for i, (name, driver, _pool) in enumerate(rows):
        print(
            f"  {name:<27} {driver:<12} {statistics.median(rates[i]):>7.0f}"
            f" {min(rates[i]):>7.0f} {max(rates[i]):>7.0f} {max(sessions[i]):>9}"
            f" {max(left[i]):>5} {max(abandoned[i]):>10} {errors[i]:>7}"
        )


def bench_p2(url: str, rounds: int, calls: int) -> None:
    import psycopg
    from psycopg_pool import ConnectionPool as PsycopgPool

    from forksafe import _pool
    from forksafe._urls import split_url

    conninfo = split_url(url)[0]

    def reset(raw: Any) -> bool:
        if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raw.rollback()
        return True

    ours = _pool.ConnectionPool(
        "bench",
        _pool.PoolOptions(max_size=1),
        connect=lambda: psycopg.connect(conninfo),
        check=lambda raw: raw.execute("SELECT 1"),
        reset=reset,
    )
    theirs = PsycopgPool(conninfo, min_size=1, max_size=1, open=True)
    theirs.wait(timeout=30)

    def cost(get: Any, put: Any) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            put(get())
        return (time.perf_counter() - start) / calls * 1e6

    samples: dict[str, list[float]] = {"forksafe": [], "psycopg_pool": []}
    try:
        ours.putconn(ours.getconn())  # open its connection before timing
        for _ in range(rounds):
            samples["forksafe"].append(cost(ours.getconn, ours.putconn))
            samples["psycopg_pool"].append(cost(theirs.getconn, theirs.putconn))
    finally:
        ours.close()
        theirs.close()
    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\nP2 -- getconn() + putconn() of an idle connection, {calls} calls, {rounds} rounds")
    for name, value in med.items():
        print(f"  {name:<13} {value:6.2f} µs (min {min(samples[name]):.2f})")
    print(f"  ratio forksafe / psycopg_pool: {med['forksafe'] / med['psycopg_pool']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, metavar="URL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20000, help="P2's calls per round")
    parser.add_argument("--only", choices=("p1", "p2"), help="run one part only")
    args = parser.parse_args(argv)
    if min(args.rounds, args.requests, args.concurrency, args.calls) < 1:
        parser.error("--rounds, --requests, --concurrency and --calls must be positive")

    from forksafe._urls import configure_django, split_url

    # This process counts sessions and migrates: psycopg 3 or mysqlclient, as the URL says.
    configure_django(args.database)
    import django

    django.setup()
    from django.db import connection

    vendor = connection.vendor
    if vendor not in ROWS:
        parser.error("the pools need a server: give a PostgreSQL or MariaDB/MySQL URL")
    from uwsgi_examples.run import migrate

    migrate(args.database)
    print(f"Python {sys.version.split()[0]}, Django {django.get_version()}, {vendor}")
    if args.only != "p2":
        bench_p1(args.database, vendor, args.rounds, args.requests, args.concurrency)
    if args.only != "p1":
        if vendor == "postgresql" and split_url(args.database)[1] in ("psycopg", ""):
            bench_p2(args.database, max(args.rounds, 5), args.calls)
        else:
            print("\nP2 runs with psycopg 3 (psycopg_pool is its pool): give a postgresql:// URL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
