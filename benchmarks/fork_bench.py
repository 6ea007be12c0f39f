"""Cost of the fork hooks: fork + child exit, 4 aliases connected, with and without forksafe.

    python benchmarks/fork_bench.py [--database URL] [--rounds 7] [--forks 200]

Each mode runs in its own interpreter (``os.register_at_fork`` hooks cannot be
removed once registered), rounds interleaved so that machine noise hits every
mode alike. One iteration = one query on each of the 4 aliases (reconnecting
if the connection was closed), ``os.fork()``, the child ``os._exit(0)``\\ s,
the parent ``waitpid``\\ s. Prints the median time per iteration of each mode
and its ratio to plain Django measured in the same run.

Modes:
  plain        no forksafe at all (the child still inherits the sockets: unsafe)
  keep-open    forksafe.install(close_before_fork=False): detach in the child only
  default      forksafe.install(): the parent also closes its idle connections before
               each fork, so every iteration reconnects 4 aliases
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("plain", "keep-open", "default")
ALIASES = ("default", "a2", "a3", "a4")


def _inner(database: str, mode: str, forks: int) -> list[float]:
    from django.conf import settings

    from forksafe import _sessions, _urls

    _, driver = _urls.split_url(database)
    _urls.select_driver(driver)
    db = _urls.database_settings(database)
    settings.configure(DATABASES={alias: dict(db) for alias in ALIASES}, USE_TZ=True)
    if mode != "plain":
        import forksafe

        forksafe.install(close_before_fork=mode == "default")
    import django

    django.setup()
    for alias in ALIASES:
        _sessions.backend_id(alias)
    times = []
    for _ in range(forks):
        start = time.perf_counter()
        for alias in ALIASES:
            _sessions.backend_id(alias)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--inner", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(_inner(args.database, args.inner, args.forks)))
        return 0

    samples: dict[str, list[float]] = {m: [] for m in MODES}
    round_medians: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--database",
                    args.database,
                    "--inner",
                    mode,
                    "--forks",
                    str(args.forks),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            times = json.loads(out.strip().splitlines()[-1])
            samples[mode].extend(times)
            round_medians[mode].append(statistics.median(times))
    print(
        f"fork + child exit, 4 aliases on {args.database.split('@')[-1]},"
        f" {args.rounds} rounds x {args.forks} forks"
    )
    base = statistics.median(round_medians["plain"])
    print(f"{'mode':<10} {'median/iteration':>17} {'ratio to plain':>15}")
    for mode in MODES:
        med = statistics.median(round_medians[mode])
        print(f"{mode:<10} {med * 1000:>14.3f} ms {med / base:>14.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
