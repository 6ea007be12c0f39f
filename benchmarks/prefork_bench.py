"""P5: uWSGI with 8 workers -- memory and requests/s: preforked + forksafe vs the alternatives.

    python benchmarks/prefork_bench.py --database URL [--rounds 3] [--workers 8]

Three ways to run the example project (``uwsgi_examples/``), whose application
queries the database while it loads:

* ``prefork+forksafe``: the master loads the application once, forks the
  workers (copy-on-write), forksafe gives each worker its own session;
* ``prefork unsafe``: the same without forksafe -- the workers share the
  master's session (errors and hangs under load: the error count says so);
* ``lazy-apps``: plain Django, each worker loads its own copy after the fork
  (the usual workaround).

Each round starts each server afresh (modes interleaved), warms it up, fires
concurrent requests, then sums the PSS of the master and every worker from
``/proc/PID/smaps_rollup``. Worker CPU milliseconds per answered request
(``/proc/PID/stat``) are printed beside requests/s: on a busy machine they
vary far less. Medians over the rounds, and ratios against
``prefork+forksafe`` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uwsgi_examples.load import fire  # noqa: E402
from uwsgi_examples.run import Server, migrate, missing  # noqa: E402

MODES = {
    # name: (configuration, EXAMPLE_FORKSAFE)
    "prefork+forksafe": ("preforked", "1"),
    "prefork unsafe": ("preforked", "0"),
    "lazy-apps": ("lazy-apps", "0"),
}


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


def one_round(
    mode: str, database: str, workers: int, requests: int, concurrency: int
) -> tuple[float, float, float, int]:
    """(total PSS in MiB, requests/s, worker CPU ms per request, errors) for a fresh server."""
    config, forksafe = MODES[mode]
    with Server(config, database, forksafe=forksafe, processes=workers) as server:
        fire(server.url, requests=workers * 25, concurrency=concurrency, timeout=3)
        children = server.children()
        cpu_before = cpu_seconds(children)
        result = fire(server.url, requests=requests, concurrency=concurrency, timeout=3)
        cpu_ms = (cpu_seconds(children) - cpu_before) * 1000 / max(1, len(result.responses))
        pids = [server.pid, *server.children()]
        total = sum(pss_kib(pid) for pid in pids) / 1024
    return total, result.requests_per_second, cpu_ms, len(result.errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="e.g. postgresql://postgres@127.0.0.1/x")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    reason = missing("uwsgi")
    if reason:
        print(reason, file=sys.stderr)
        return 1
    migrate(args.database)
    pss: dict[str, list[float]] = {m: [] for m in MODES}
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    errors: dict[str, int] = dict.fromkeys(MODES, 0)
    for _ in range(args.rounds):
        for mode in MODES:
            mib, rate, cpu_ms, errs = one_round(
                mode, args.database, args.workers, args.requests, args.concurrency
            )
            pss[mode].append(mib)
            rps[mode].append(rate)
            cpu[mode].append(cpu_ms)
            errors[mode] += errs
    where = args.database.split("@")[-1]
    print(
        f"uWSGI, {args.workers} workers, {args.rounds} rounds x {args.requests} requests"
        f" ({args.concurrency} concurrent) on {where}"
    )
    print(
        f"{'mode':18} {'total PSS MiB':>13} {'x':>6} {'requests/s':>11} {'x':>6}"
        f" {'CPU ms/req':>10} {'x':>6} {'errors':>7}"
    )
    base = "prefork+forksafe"
    base_pss, base_rps = statistics.median(pss[base]), statistics.median(rps[base])
    base_cpu = statistics.median(cpu[base])
    for mode in MODES:
        m_pss, m_rps, m_cpu = (statistics.median(x[mode]) for x in (pss, rps, cpu))
        print(
            f"{mode:18} {m_pss:13.1f} {m_pss / base_pss:6.2f} {m_rps:11.0f}"
            f" {m_rps / base_rps:6.2f} {m_cpu:10.2f} {m_cpu / base_cpu:6.2f} {errors[mode]:7d}"
        )
    print("(x: ratio to prefork+forksafe; errors summed over the rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
