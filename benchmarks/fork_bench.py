"""Cost of a fork with 4 aliases connected: minor page faults, CPU and wall time, per mode.

    python benchmarks/fork_bench.py [--database URL] [--rounds 5] [--forks 200]

Each mode runs in its own interpreter (``os.register_at_fork`` hooks cannot be
removed once registered), rounds interleaved so that machine noise hits every
mode alike. One iteration = ``os.fork()``, the child ``os._exit(0)``\\ s at once,
the parent ``wait4``\\ s; in the ``queries`` loop each iteration first runs one
query on each of the 4 aliases, in the ``back-to-back`` loop only the first
does. Printed per mode and loop: the median over the rounds of each round's
mean per fork (the first third of each round is a warm-up, not counted) of

* the minor page faults of the parent (``RUSAGE_SELF``) and of the child
  (``RUSAGE_CHILDREN``), and what each mode adds to plain Django's;
* the CPU time of parent and child, and the wall time.

The faults are the headline figure: each one is a page copied (copy-on-write)
because a process that forked wrote to it -- the parent too, for every page it
writes between two forks, even after the child exited. The kernel counts them
exactly, so the machine's load does not change them, where a wall time on a busy
2-core machine swings by 15 % from one run to the next.

Modes:
  plain      Django alone; forksafe is not even imported (the child inherits the
             sockets: unsafe)
  imported   forksafe imported (its at-fork hooks registered), not installed
  installed  install(close_before_fork=False): the parent keeps its connections
             open; each child detaches the 4 it inherits
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("plain", "imported", "installed")
LOOPS = ("back-to-back", "queries")
ALIASES = ("default", "a2", "a3", "a4")
ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("parent_faults", "child_faults", "cpu", "wall")


def _urls() -> Any:
    """``forksafe._urls`` without importing the ``forksafe`` package (plain must not)."""
    spec = importlib.util.spec_from_file_location("_fork_bench_urls", ROOT / "forksafe/_urls.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _query(alias: str) -> None:
    from django.db import connections

    conn = connections[alias]
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _inner(database: str, mode: str, loop: str, forks: int) -> dict[str, float]:
    from django.conf import settings

    urls = _urls()
    _, driver = urls.split_url(database)
    urls.select_driver(driver)
    db = urls.database_settings(database)
    settings.configure(DATABASES={alias: dict(db) for alias in ALIASES}, USE_TZ=True)
    if mode != "plain":
        import forksafe

        if mode == "installed":
            forksafe.install(close_before_fork=False)
    import django

    django.setup()
    for alias in ALIASES:
        _query(alias)
    ru, me, children = resource.getrusage, resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN
    samples: dict[str, list[float]] = {figure: [] for figure in FIGURES}
    for _ in range(forks):
        if loop == "queries":
            for alias in ALIASES:
                _query(alias)
        start, start_cpu = time.perf_counter(), time.process_time()
        parent, child = ru(me).ru_minflt, ru(children).ru_minflt
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        _, _, usage = os.wait4(pid, 0)
        samples["parent_faults"].append(ru(me).ru_minflt - parent)
        samples["child_faults"].append(ru(children).ru_minflt - child)
        samples["cpu"].append(time.process_time() - start_cpu + usage.ru_utime + usage.ru_stime)
        samples["wall"].append(time.perf_counter() - start)
    from django.db import connections

    connections.close_all()  # the servers count sessions dropped without a goodbye
    warm = forks // 3
    return {figure: statistics.fmean(values[warm:]) for figure, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--inner", nargs=2, metavar=("MODE", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        mode, loop = args.inner
        print(json.dumps(_inner(args.database, mode, loop, args.forks)))
        return 0

    rounds: dict[tuple[str, str], dict[str, list[float]]] = {
        (mode, loop): {figure: [] for figure in FIGURES} for mode in MODES for loop in LOOPS
    }
    for _ in range(args.rounds):
        for loop in LOOPS:
            for mode in MODES:
                command = [sys.executable, __file__, "--database", args.database]
                command += ["--forks", str(args.forks), "--inner", mode, loop]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                for figure, value in json.loads(out.strip().splitlines()[-1]).items():
                    rounds[mode, loop][figure].append(value)
    med = {
        key: {f: statistics.median(v) for f, v in figures.items()}
        for key, figures in rounds.items()
    }
    print(
        f"fork + child exit, 4 aliases on {args.database.split('@')[-1]}, Python"
        f" {sys.version.split()[0]}, {args.rounds} rounds x {args.forks} forks"
        " (median of round means)"
    )
    print(
        f"{'loop':<13} {'mode':<10} {'parent faults':>15} {'child faults':>15}"
        f" {'CPU':>9} {'ratio':>6} {'wall':>9} {'ratio':>6}"
    )
    for loop in LOOPS:
        base = med["plain", loop]
        for mode in MODES:
            m = med[mode, loop]
            extra_parent = m["parent_faults"] - base["parent_faults"]
            extra_child = m["child_faults"] - base["child_faults"]
            print(
                f"{loop:<13} {mode:<10} {m['parent_faults']:6.1f} ({extra_parent:+5.1f})"
                f" {m['child_faults']:6.1f} ({extra_child:+5.1f})"
                f" {m['cpu'] * 1000:6.3f} ms {m['cpu'] / base['cpu']:5.2f}x"
                f" {m['wall'] * 1000:6.3f} ms {m['wall'] / base['wall']:5.2f}x"
            )
    print(
        "(faults: minor page faults per fork, in brackets over plain Django; CPU: parent +"
        " child CPU time per fork; wall: fork to wait4() returning, which on a busy machine"
        " mostly measures the wait for a core)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
