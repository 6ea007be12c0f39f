"""P5: uWSGI with 8 workers -- memory and requests/s: preforked + forksafe vs the alternatives.

    python benchmarks/prefork_bench.py --database URL [--app large] [--rounds 3] [--workers 8]

Four ways to run the example project (``uwsgi_examples/``), whose application
queries the database while it loads:

* ``prefork unsafe``: the master loads the application once and forks the
  workers (copy-on-write), without forksafe -- the workers share the master's
  session (errors and hangs under load: the error count says so);
* ``prefork+forksafe``: the same with ``forksafe.install()``: each worker
  detaches what it inherited and opens a session of its own;
* ``prefork+freeze``: the same with ``forksafe.install(freeze_gc=True)``:
  the cyclic GC never scans what the workers inherited (``gc.freeze()``);
* ``lazy-apps``: plain Django, each worker loads its own copy after the fork
  (the usual workaround).

``--app small`` is the example project as it is (two contrib apps, one view);
``--app large`` (the default) adds Django's admin, sessions and messages and a
generated app of 300 models with admin classes and views
(``exampleproject.settings_large``), all loaded before the fork.

Each round starts each server afresh (modes interleaved), warms it up, fires
concurrent requests, then sums the PSS of the master and every worker
(``/proc/PID/smaps_rollup``): once after the load, and once more after every
worker ran a full garbage collection (``GET /collect``), as long-running
workers eventually do. Worker CPU milliseconds per answered request
(``/proc/PID/stat``) are printed beside requests/s: on a busy machine they vary
far less. Medians over the rounds; ratios against ``prefork unsafe`` measured
in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uwsgi_examples.load import fire  # noqa: E402
from uwsgi_examples.run import Server, migrate, missing  # noqa: E402

MODES = {
    # name: (configuration, EXAMPLE_FORKSAFE)
    "prefork unsafe": ("preforked", "0"),
    "prefork+forksafe": ("preforked", "1"),
    "prefork+freeze": ("preforked", "freeze"),
    "lazy-apps": ("lazy-apps", "0"),
}
BASE = "prefork unsafe"
SETTINGS = {"small": "exampleproject.settings", "large": "exampleproject.settings_large"}


@dataclass
class Round:
    """What one fresh server measured."""

    pss: float  # MiB, master + workers, after the load
    pss_gc: float  # MiB, after a full collection in every worker
    rps: float
    cpu_ms: float  # worker CPU per answered request
    errors: int


def pss_kib(pid: int) -> int:
    """Proportional set size of one process, in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def total_pss(server: Server) -> float:
    """PSS of the master and all its children, in MiB."""
    return sum(pss_kib(pid) for pid in [server.pid, *server.children()]) / 1024


def collect_in_every_worker(server: Server, workers: int, timeout: float = 60) -> None:
    """``GET /collect`` until every worker has answered once (or ``timeout``)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        result = fire(server.url + "collect", requests=workers, concurrency=workers, timeout=10)
        seen |= {r["pid"] for r in result.responses}
    if len(seen) < workers:
        print(f"  (only {len(seen)} of {workers} workers collected)", file=sys.stderr)


def one_round(
    mode: str, database: str, app: str, workers: int, requests: int, concurrency: int
) -> Round:
    """Start ``mode`` afresh, load it, measure it, stop it."""
    config, forksafe = MODES[mode]
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS[app]}
    server = Server(config, database, forksafe=forksafe, processes=workers, env=env)
    server.start(timeout=600)  # lazy-apps: every worker loads the large app itself
    try:
        fire(server.url, requests=workers * 25, concurrency=concurrency, timeout=3)
        children = server.children()
        cpu_before = cpu_seconds(children)
        result = fire(server.url, requests=requests, concurrency=concurrency, timeout=3)
        cpu_ms = (cpu_seconds(children) - cpu_before) * 1000 / max(1, len(result.responses))
        pss = total_pss(server)
        collect_in_every_worker(server, workers)
        pss_gc = total_pss(server)
    finally:
        server.stop()
    return Round(pss, pss_gc, result.requests_per_second, cpu_ms, len(result.errors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="e.g. postgresql://postgres@127.0.0.1/x")
    parser.add_argument("--app", choices=sorted(SETTINGS), default="large")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    args = parser.parse_args(argv)
    reason = missing("uwsgi")
    if reason:
        print(reason, file=sys.stderr)
        return 1
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    migrate(args.database, settings=SETTINGS[args.app])
    rounds: dict[str, list[Round]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            rounds[mode].append(
                one_round(
                    mode, args.database, args.app, args.workers, args.requests, args.concurrency
                )
            )
    where = args.database.split("@")[-1]
    print(
        f"uWSGI, {args.app} app, {args.workers} workers, {args.rounds} rounds x"
        f" {args.requests} requests ({args.concurrency} concurrent) on {where}"
    )
    print(
        f"{'mode':18} {'PSS MiB':>8} {'x':>6} {'after GC':>9} {'x':>6} {'requests/s':>11}"
        f" {'x':>6} {'CPU ms/req':>10} {'x':>6} {'errors':>7}"
    )
    med = {
        m: {
            k: statistics.median(getattr(r, k) for r in rounds[m])
            for k in ("pss", "pss_gc", "rps", "cpu_ms")
        }
        for m in modes
    }
    base = med.get(BASE) or med[modes[0]]
    for mode in modes:
        m = med[mode]
        errors = sum(r.errors for r in rounds[mode])
        print(
            f"{mode:18} {m['pss']:8.1f} {m['pss'] / base['pss']:6.2f}"
            f" {m['pss_gc']:9.1f} {m['pss_gc'] / base['pss_gc']:6.2f}"
            f" {m['rps']:11.0f} {m['rps'] / base['rps']:6.2f}"
            f" {m['cpu_ms']:10.2f} {m['cpu_ms'] / base['cpu_ms']:6.2f} {errors:7d}"
        )
    print(f"(x: ratio to {BASE if BASE in med else modes[0]}; errors summed over the rounds)")
    if "lazy-apps" in med:
        for mode in ("prefork+forksafe", "prefork+freeze"):
            if mode in med:
                print(
                    f"lazy-apps / {mode}: PSS {med['lazy-apps']['pss'] / med[mode]['pss']:.2f}x,"
                    f" after GC {med['lazy-apps']['pss_gc'] / med[mode]['pss_gc']:.2f}x;"
                    f" requests/s {med[mode]['rps'] / med['lazy-apps']['rps']:.2f}x lazy-apps"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
