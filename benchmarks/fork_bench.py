"""Cost of the fork hooks: fork + child exit, 4 aliases connected, for every forksafe mode.

    python benchmarks/fork_bench.py [--database URL] [--rounds 9] [--forks 150]

Each mode runs in its own interpreter (``os.register_at_fork`` hooks cannot be
removed once registered), rounds interleaved so that machine noise hits every
mode alike. One iteration = one query on each of the 4 aliases (reconnecting
if the connection was closed), ``os.fork()``, the child ``os._exit(0)``\\ s at
once, the parent ``wait4``\\ s. Prints, per mode, the median over the rounds
of each round's median time per iteration and its ratio to plain Django
measured in the same run; the same for the CPU time of parent and child per
iteration (on a busy machine the wall time mostly measures the wait for a
core); and what the child spends in forksafe's reset:
the time between two at-fork hooks registered just before and just after
``forksafe.install()`` (so: forksafe's own child hook and nothing else), per
fork and per inherited connection, and the page faults it takes (copy-on-write
of pages it writes: a count the machine's load does not change).

Modes:
  plain              no forksafe at all (the child still inherits the sockets: unsafe)
  keep-open          install(close_before_fork=False): the parent keeps its connections
                     open; each child detaches the 4 it inherits
  close-before-fork  install(close_before_fork=True): the parent closes its idle
                     connections before each fork (the child inherits nothing to
                     detach) and reconnects on its next query
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

# mode -> the keyword arguments of forksafe.install(), None: no forksafe
MODES: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "keep-open": {"close_before_fork": False},
    "close-before-fork": {"close_before_fork": True},
}
ALIASES = ("default", "a2", "a3", "a4")


def _inner(database: str, mode: str, forks: int) -> dict[str, list[float]]:
    # Hooks run in registration order in the child: the marks bracket forksafe's hook,
    # which importing forksafe registers (so ``first`` is registered before that import).
    marks: list[int] = [0, 0, 0, 0]

    def first() -> None:
        marks[0] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        marks[1] = time.perf_counter_ns()

    def last() -> None:
        marks[2] = time.perf_counter_ns()
        marks[3] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    os.register_at_fork(after_in_child=first)
    assert "forksafe" not in sys.modules

    from django.conf import settings

    from forksafe import _sessions, _urls

    _, driver = _urls.split_url(database)
    _urls.select_driver(driver)
    db = _urls.database_settings(database)
    settings.configure(DATABASES={alias: dict(db) for alias in ALIASES}, USE_TZ=True)

    options = MODES[mode]
    if options is not None:
        import forksafe

        forksafe.install(**options)
    os.register_at_fork(after_in_child=last)
    import django

    django.setup()
    for alias in ALIASES:
        _sessions.backend_id(alias)
    read_end, write_end = os.pipe()
    times, cpu, reset_ns, faults = [], [], [], []
    for _ in range(forks):
        start, start_cpu = time.perf_counter(), time.process_time()
        for alias in ALIASES:
            _sessions.backend_id(alias)
        pid = os.fork()
        if pid == 0:
            os.write(write_end, f"{marks[2] - marks[1]} {marks[3] - marks[0]}\n".encode())
            os._exit(0)
        _, _, child = os.wait4(pid, 0)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu + child.ru_utime + child.ru_stime)
        ns, flt = os.read(read_end, 100).split()
        reset_ns.append(float(ns))
        faults.append(float(flt))
    return {"times": times, "cpu": cpu, "reset_ns": reset_ns, "faults": faults}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--forks", type=int, default=150)
    parser.add_argument("--inner", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(_inner(args.database, args.inner, args.forks)))
        return 0

    medians: dict[str, dict[str, list[float]]] = {
        m: {"times": [], "cpu": [], "reset_ns": [], "faults": []} for m in MODES
    }
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
            samples = json.loads(out.strip().splitlines()[-1])
            for key, values in samples.items():
                medians[mode][key].append(statistics.median(values))
    print(
        f"fork + child exit, 4 aliases on {args.database.split('@')[-1]},"
        f" {args.rounds} rounds x {args.forks} forks (medians of round medians)"
    )
    med = {m: {k: statistics.median(v) for k, v in medians[m].items()} for m in MODES}
    base = med["plain"]
    print(
        f"{'mode':<18} {'per iteration':>13} {'ratio':>7} {'CPU':>9} {'ratio':>7}"
        f" {'child hook':>11} {'per conn.':>10} {'faults':>7}"
    )
    for mode in MODES:
        m = med[mode]
        hook_us = (m["reset_ns"] - base["reset_ns"]) / 1000
        # Only keep-open leaves connections for the child to detach.
        per_conn = f"{hook_us / len(ALIASES):7.1f} us" if mode == "keep-open" else f"{'':>10}"
        print(
            f"{mode:<18} {m['times'] * 1000:10.3f} ms {m['times'] / base['times']:6.3f}x"
            f" {m['cpu'] * 1000:6.3f} ms {m['cpu'] / base['cpu']:6.3f}x"
            f" {hook_us:8.1f} us {per_conn} {m['faults'] - base['faults']:7.0f}"
        )
    print(
        "(CPU: parent + child CPU time per iteration, which waiting for a busy machine's cores"
        " does not inflate; child hook: forksafe's child reset, over plain's empty hooks;"
        " per conn.: divided by the 4 inherited connections; faults: page faults the reset"
        " takes in the child)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
