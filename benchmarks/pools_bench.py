"""P4: ``forksafe.Pool.map`` vs the standard library's ``Pool.map`` (fork start method).

Two workloads, each timed ``--repeat`` times alternately with both pools, in one run:

* ``tiny``: 10,000 tasks that do nothing but return (the pool's own overhead);
* ``db``: 2000 tasks that each run one ``SELECT`` through Django.

The standard-library pool runs with the parent's connection closed before it is created
(otherwise its workers share the parent's session, which is the bug forksafe fixes, and
the map may hang). Plain Django is used for it: forksafe is imported, but ``install()``
is not called, so no at-fork hook runs. Prints medians, the ratio forksafe/stdlib, and the
server sessions at the peak of a forksafe map and after ``join()``.

    python benchmarks/pools_bench.py --database postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from forksafe import _sessions, _urls


def tiny_task(i: int) -> int:
    """The smallest task: the pool's overhead."""
    return i


def db_task(_: int) -> int:
    """One query through Django's connection of the worker."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def _time_map(make_pool: Callable[[], Any], task: Callable[[int], int], n: int) -> float:
    """Wall time of creating the pool, mapping ``n`` tasks, close() and join()."""
    from django.db import connections

    _sessions.backend_id()  # the parent has used the DB
    connections.close_all()  # fair to the standard library pool (see the module docs)
    start = time.perf_counter()
    pool = make_pool()
    result = pool.map(task, range(n), chunksize=max(1, n // 200))
    pool.close()
    pool.join()
    elapsed = time.perf_counter() - start
    assert len(result) == n
    return elapsed


def _peak_sessions(url: str, processes: int) -> tuple[int | None, int | None, int | None]:
    """Baseline, peak during a forksafe map, and count after join() (None on SQLite)."""
    import forksafe

    baseline = _sessions.count_sessions()
    peak: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            n = _sessions.count_sessions()
            if n is not None:
                peak.append(n)
            time.sleep(0.01)

    pool = forksafe.Pool(processes, context=forksafe.get_context("fork"))
    pool.map(db_task, range(processes * 4), chunksize=1)  # every worker has connected
    sampler = threading.Thread(target=sample)
    sampler.start()
    pool.map(db_task, range(2000), chunksize=10)
    stop.set()
    sampler.join()
    pool.close()
    pool.join()
    after = _sessions.settle_sessions(baseline)
    return baseline, max(peak) if peak else None, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, metavar="URL")
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args(argv)

    _urls.configure_django(args.database)
    import django

    django.setup()
    import forksafe

    fork = multiprocessing.get_context("fork")
    safe = forksafe.get_context("fork")
    n_proc = args.processes
    print(f"P4 on {args.database.split('@')[-1]}: {n_proc} processes, fork, {args.repeat} runs")
    print(f"{'workload':<12}{'stdlib (s)':>12}{'forksafe (s)':>14}{'ratio':>8}")
    for name, task, n in (("tiny x10000", tiny_task, 10_000), ("db x2000", db_task, 2000)):
        plain: list[float] = []
        ours: list[float] = []
        for _ in range(args.repeat):
            plain.append(_time_map(lambda: fork.Pool(n_proc), task, n))
            ours.append(_time_map(lambda: safe.Pool(n_proc), task, n))
        p, o = statistics.median(plain), statistics.median(ours)
        print(f"{name:<12}{p:>12.3f}{o:>14.3f}{o / p:>8.3f}")
    baseline, peak, after = _peak_sessions(args.database, n_proc)
    if baseline is None:
        print("sessions: - (SQLite has no server sessions)")
    else:
        assert peak is not None and after is not None
        print(
            f"sessions (parent's closed): baseline {baseline}, peak during map"
            f" {peak} (+{peak - baseline}, goal +{n_proc}), after join() {after}"
            f" (+{after - baseline}, goal +0)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
