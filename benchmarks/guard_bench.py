"""Cost of the pid check before each use of a connection (the second line of defence).

    python benchmarks/guard_bench.py [--database URL] [--rounds 9] [--cursors 20000]

One interpreter, one connection, rounds interleaved: each round times, with
forksafe's wrapped ``BaseDatabaseWrapper`` methods and then with Django's originals put
back, ``ensure_connection()`` alone (the one wrapped method on a cursor's path: what
the check adds, isolated), ``--cursors`` cursor creations (``with connection.cursor():
pass``; no query) and ``--queries`` ``SELECT 1`` round trips. Prints the median time
of each, and the median over rounds of the per-round difference (ns) and ratio. Also
the pid source: ``MADV_WIPEONFORK`` page or ``os.getpid()``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any


def _setup(database: str) -> Any:
    from django.conf import settings

    from forksafe import _urls

    settings.configure(DATABASES={"default": _urls.database_settings(database)}, USE_TZ=True)
    import forksafe

    forksafe.install()
    import django

    django.setup()
    from django.db import connections

    # The wrapper itself: ``django.db.connection`` is a proxy whose every attribute
    # access looks the wrapper up again (µs each), which would drown what is measured.
    connection = connections["default"]
    connection.ensure_connection()
    return connection


def _originals(on: bool) -> None:
    """Put Django's own methods back (``on``) or forksafe's wrapped ones."""
    from django.db.backends.base.base import BaseDatabaseWrapper

    for name in ("ensure_connection", "close"):
        current = BaseDatabaseWrapper.__dict__[name]
        original = getattr(current, "__forksafe_original__", None)
        if on and original is not None:
            _originals.saved[name] = current  # type: ignore[attr-defined]
            setattr(BaseDatabaseWrapper, name, original)
        elif not on and original is None:
            setattr(BaseDatabaseWrapper, name, _originals.saved[name])  # type: ignore[attr-defined]


_originals.saved = {}  # type: ignore[attr-defined]


def _time(func: Callable[[], None], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        func()
    return (time.perf_counter_ns() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--cursors", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    connection = _setup(args.database)
    from django.db.backends.base.base import BaseDatabaseWrapper

    from forksafe import _guard

    def ensure() -> None:
        # The only method on a cursor's path that the guard wraps.
        BaseDatabaseWrapper.ensure_connection(connection)

    def cursor_only() -> None:
        with connection.cursor():
            pass

    def one_query() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    what_to_time = (
        ("ensure_connection()", ensure, args.cursors * 5),
        ("cursor", cursor_only, args.cursors),
        ("query", one_query, args.queries),
    )
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for mode in ("forksafe", "plain"):
            _originals(on=mode == "plain")
            for what, func, n in what_to_time:
                results.setdefault(f"{what} {mode}", []).append(_time(func, n))
    _originals(on=False)
    connection.close()
    source = "MADV_WIPEONFORK page" if _guard._flag is not None else "os.getpid()"
    print(f"database: {connection.vendor}, {args.rounds} rounds, pid source: {source}")
    for what, _, _ in what_to_time:
        guarded, plain = results[f"{what} forksafe"], results[f"{what} plain"]
        # Per round (the two modes ran back to back), then the median over rounds.
        diff = statistics.median(g - p for g, p in zip(guarded, plain, strict=True))
        ratio = statistics.median(g / p for g, p in zip(guarded, plain, strict=True))
        print(
            f"per {what}: forksafe {statistics.median(guarded):,.0f} ns, plain Django"
            f" {statistics.median(plain):,.0f} ns; median per-round difference"
            f" {diff:+,.0f} ns, ratio {ratio:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
