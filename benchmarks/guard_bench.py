"""Cost of the pid check before each use of a connection (the second line of defence).

    python benchmarks/guard_bench.py [--database URL] [--rounds 9] [--cursors 20000]

One interpreter, one connection, rounds interleaved: each round times ``--cursors``
cursor creations (``with connection.cursor(): pass``: ``ensure_connection()``,
``create_cursor()``, Django's cursor wrapper, ``close()`` of the cursor; no query) with
forksafe's wrapped ``BaseDatabaseWrapper`` methods, then the same with Django's
originals put back, then ``SELECT 1`` round trips both ways. Prints the median time
per cursor and per query of each, the difference in ns and the ratio measured in
the same run. Also the pid source: ``MADV_WIPEONFORK`` page or ``os.getpid()``.
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
    from django.db import connection

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
    from forksafe import _guard

    def cursor_only() -> None:
        with connection.cursor():
            pass

    def one_query() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for mode in ("forksafe", "plain"):
            _originals(on=mode == "plain")
            for what, func, n in (
                ("cursor", cursor_only, args.cursors),
                ("query", one_query, args.queries),
            ):
                results.setdefault(f"{what} {mode}", []).append(_time(func, n))
    _originals(on=False)
    connection.close()
    print(
        f"database: {connection.vendor}, pid source:"
        f" {'MADV_WIPEONFORK page' if _guard._flag is not None else 'os.getpid()'}"
    )
    for what in ("cursor", "query"):
        guarded = statistics.median(results[f"{what} forksafe"])
        plain = statistics.median(results[f"{what} plain"])
        print(
            f"per {what}: forksafe {guarded:,.0f} ns, plain Django {plain:,.0f} ns,"
            f" difference {guarded - plain:+,.0f} ns, ratio {guarded / plain:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
