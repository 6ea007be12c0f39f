"""Threads: executor throughput (P1) and sessions left by short threads (P2).

Run: ``python benchmarks/threads_bench.py --database postgresql://postgres@127.0.0.1/test``

P1 -- tasks/s of 8 workers running one-row ``SELECT 1`` tasks, medians of several rounds,
each round a fresh executor (thread start and connects included), modes interleaved:

* ``plain``: :class:`concurrent.futures.ThreadPoolExecutor`; reuses each worker's
  connection and leaks it at shutdown (until the cyclic GC runs);
* ``close-each``: the widely copied fix, ``connections.close_all()`` after every task
  (here run in the worker, which is the fix's best case);
* ``forksafe``: :class:`forksafe.ThreadPoolExecutor` with ``CONN_MAX_AGE=None``.

``CONN_MAX_AGE`` is ``None`` for every mode: forksafe applies Django's rules between
tasks, and with Django's default ``0`` it closes after every task, like after every
request (that is ``close-each``'s speed). ``--skip-close-each`` leaves that mode out
(it takes most of the run's time).

P1 overhead -- forksafe's CPU time per task in µs: one worker thread with one open
connection runs a no-op task through the executor's per-task wrapper and directly, in
interleaved rounds; the difference of the medians.

P2 -- server sessions still open right after N short threads (one query each) were
joined, without ``gc.collect()``: plain ``threading.Thread``, ``forksafe.Thread``, and
plain threads under ``forksafe.install(threads=True)``. Threads run in waves of 10.
The server is shared: a plain run that leaks more than ``--cap`` sessions gets a
``gc.collect()`` (counted in the output) rather than exhausting ``max_connections``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import ThreadPoolExecutor as PlainExecutor
from typing import Any


def select_one(_: object = None) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def select_then_close(_: object = None) -> int:
    from django.db import connections

    try:
        return select_one()
    finally:
        connections.close_all()


def _baseline(url: str) -> int:
    from forksafe._sessions import count_sessions, settle_sessions

    gc.collect()
    n = count_sessions()
    assert n is not None, "P1/P2 count server sessions: use PostgreSQL or MariaDB"
    settled = settle_sessions(n, timeout=1.0)
    assert settled is not None
    return settled


def p1_round(
    url: str, make: Callable[[], Executor], task: Callable[[object], int], tasks: int
) -> tuple[float, int, float]:
    """One round: (tasks per second, sessions left right after shutdown, CPU µs per task).

    The CPU time is this process's (all its threads): what the executor costs here,
    whatever else the machine runs meanwhile.
    """
    from forksafe._sessions import count_sessions

    before = _baseline(url)
    start = time.perf_counter()
    cpu = time.process_time()
    executor = make()
    results = list(executor.map(task, range(tasks)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    executor.shutdown(wait=True)
    time.sleep(0.2)  # server-side exit of closed sessions
    left = (count_sessions() or 0) - before
    assert results == [1] * tasks
    del executor
    return tasks / elapsed, left, cpu / tasks * 1e6


def bench_p1(url: str, rounds: int, tasks: int, workers: int, *, close_each: bool) -> None:
    import forksafe

    modes: dict[str, tuple[Callable[[], Executor], Callable[[object], int]]] = {
        "plain": (lambda: PlainExecutor(workers), select_one),
        "close-each": (lambda: PlainExecutor(workers), select_then_close),
        "forksafe": (lambda: forksafe.ThreadPoolExecutor(workers), select_one),
    }
    if not close_each:
        del modes["close-each"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    left: dict[str, list[int]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    pair = ["plain", "forksafe"]
    for n in range(rounds):
        # Interleaved, the pair adjacent and in alternating order: drift of a shared
        # machine hits both. close-each (2000 connects) goes first, not between them.
        order = [m for m in modes if m not in pair] + (pair if n % 2 == 0 else pair[::-1])
        for mode in order:
            make, task = modes[mode]
            rate, sessions, cpu_us = p1_round(url, make, task, tasks)
            rates[mode].append(rate)
            left[mode].append(sessions)
            cpu[mode].append(cpu_us)
    # Each round's forksafe rate over the plain rate measured next to it.
    paired = statistics.median(
        f / p for f, p in zip(rates["forksafe"], rates["plain"], strict=True)
    )
    print(f"P1: {workers} workers, {tasks} SELECTs per round, {rounds} rounds")
    print(
        f"  {'mode':<12} {'median tasks/s':>15} {'min':>9} {'max':>9}  sessions left  CPU µs/task"
    )
    med = {m: statistics.median(r) for m, r in rates.items()}
    for mode in modes:
        print(
            f"  {mode:<12} {med[mode]:>15,.0f} {min(rates[mode]):>9,.0f}"
            f" {max(rates[mode]):>9,.0f}  {max(left[mode]):>13}"
            f"  {statistics.median(cpu[mode]):>11.1f}"
        )
    print(f"  ratio forksafe / plain:      {med['forksafe'] / med['plain']:.3f} (of the medians)")
    print(f"  median of per-round ratios:  {paired:.3f}")
    if close_each:
        print(f"  ratio forksafe / close-each: {med['forksafe'] / med['close-each']:.1f}")


def _noop() -> None:
    return None


def bench_p1_overhead(rounds: int, calls: int = 50_000) -> None:
    """Print forksafe's per-task CPU time (µs) in a worker thread with one open connection."""
    from forksafe import _tasks, _thread_guard

    def measure() -> None:
        _thread_guard.guard_this_thread()
        select_one()
        direct: list[float] = []
        wrapped: list[float] = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                _noop()
            direct.append((time.perf_counter() - start) / calls * 1e6)
            start = time.perf_counter()
            for _ in range(calls):
                _tasks.run_task(_noop)
            wrapped.append((time.perf_counter() - start) / calls * 1e6)
        overhead = statistics.median(wrapped) - statistics.median(direct)
        print(f"P1 overhead: {overhead:.2f} µs per task (one open connection, {rounds} rounds)")

    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()


def p2_run(url: str, thread_class: type[threading.Thread], n: int, cap: int) -> tuple[int, int]:
    """(sessions left after ``n`` threads, forced collections)."""
    from forksafe._sessions import count_sessions

    before = _baseline(url)
    forced = 0
    for start in range(0, n, 10):
        wave = [thread_class(target=select_one) for _ in range(min(10, n - start))]
        for t in wave:
            t.start()
        for t in wave:
            t.join()
        if (count_sessions() or 0) - before > cap:
            gc.collect()
            forced += 1
    time.sleep(0.2)  # server-side exit of closed sessions
    left = (count_sessions() or 0) - before
    gc.collect()
    return left, forced


def bench_p2(url: str, counts: list[int], cap: int) -> None:
    import forksafe

    print("P2: sessions left right after N short threads were joined (no gc.collect())")
    print(
        f"  {'threads':>7}  {'plain':>13}  {'forksafe.Thread':>15}  {'install(threads=True)':>21}"
    )
    for n in counts:
        row: list[str] = []
        for mode in ("plain", "Thread", "install"):
            if mode == "install":
                forksafe.install(threads=True)
            try:
                cls: type[threading.Thread] = (
                    forksafe.Thread if mode == "Thread" else threading.Thread
                )
                left, forced = p2_run(url, cls, n, cap)
            finally:
                forksafe.install(threads=False)
            row.append(f"{left}" + (f" ({forced} forced gc)" if forced else ""))
        print(f"  {n:>7}  {row[0]:>13}  {row[1]:>15}  {row[2]:>21}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, metavar="URL")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--cap", type=int, default=40, help="leaked sessions before a forced gc")
    parser.add_argument("--skip-close-each", action="store_true", help="P1 without close-each")
    parser.add_argument("--only", choices=("p1", "p2"), help="run one part only")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.tasks < 1 or args.workers < 1 or args.cap < 1:
        parser.error("--rounds, --tasks, --workers and --cap must be positive")

    from forksafe._urls import configure_django

    driver = configure_django(args.database)
    import django

    django.setup()
    from django.db import connections

    settings_dict: dict[str, Any] = connections.settings["default"]
    settings_dict["CONN_MAX_AGE"] = None
    print(
        f"Python {sys.version.split()[0]}, Django {django.get_version()}, driver {driver},"
        f" {connections['default'].vendor}"
    )
    if args.only != "p2":
        bench_p1(
            args.database,
            args.rounds,
            args.tasks,
            args.workers,
            close_each=not args.skip_close_each,
        )
        bench_p1_overhead(args.rounds)
    if args.only != "p1":
        bench_p2(args.database, args.threads, args.cap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
