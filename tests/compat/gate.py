"""Run Django's own test-suite with and without forksafe; fail on what fails only with it.

    python -m tests.compat.gate [postgresql] [mysql] [--labels LABEL ...] [--parallel N]
                                [--cache DIR] [--fresh-baseline]

Downloads the source distribution of exactly the installed Django (``pip
download``, once per version into ``--cache``) and runs its ``tests/runtests.py``
with ``tests.compat.forksafe_<server>`` (``forksafe.install(threads=True)``).
A test that fails there is forksafe's unless it also fails with
``tests.compat.plain_<server>``, the same settings without forksafe: the
baseline, run only when needed and cached per Django, Python, server version,
labels and parallelism. Exit status 1 names every test that fails only with
forksafe; 2 when Django's runner could not run at all, or a server does not
answer under ``CI``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

from tests.compat.runner import REPORT_ENV

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("postgresql", "mysql")
URL_ENV = {"postgresql": "FORKSAFE_TEST_POSTGRES_URL", "mysql": "FORKSAFE_TEST_MYSQL_URL"}
# Django's labels that open connections in threads, forks (--parallel), live servers, the
# ASGI handler's executors and transactions -- what forksafe changes -- on both aliases, the
# database cache and sessions, plus basic model use.
LABELS = (
    "backends",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "db_utils",
    "handlers",
    "async",
    "get_or_create",
    "servers",
    "test_runner",
    "test_utils",
    "delete_regress",
    "basic",
    "asgi",
    "cache",
    "multiple_database",
    "sessions_tests",
)
DEFAULT_CACHE = ROOT / ".nox" / ".cache" / "compat"
# Seconds for one runtests.py run (the labels take well under a minute per server): a hung
# run must fail, not hold CI until its own limit.
RUN_TIMEOUT = 20 * 60
DOWNLOAD_TIMEOUT = 5 * 60

Report = dict[str, Any]


def django_tests(cache: Path) -> Path:
    """``tests/`` of the installed Django's sdist, downloaded into ``cache`` once."""
    django_version = version("Django")
    target = cache / f"django-{django_version}"
    if not (target / "tests" / "runtests.py").exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            print(f"downloading Django {django_version}'s source distribution", flush=True)
            pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
            only_sdist = ["--quiet", "--no-deps", "--no-binary", ":all:", "--dest", tmp]
            subprocess.run(
                [*pip, *only_sdist, f"Django=={django_version}"],
                check=True,
                timeout=DOWNLOAD_TIMEOUT,
            )
            (archive,) = Path(tmp).glob("*.tar.gz")
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
            # Renamed whole, so a cache never holds a half-extracted tree.
            (Path(tmp) / archive.name.removesuffix(".tar.gz")).rename(target)
    return target / "tests"


@dataclass(frozen=True)
class Plan:
    """What both runs of one gate share."""

    tests_dir: Path
    labels: list[str]
    parallel: int
    timeout: float
    cache: Path


def stop(message: str) -> NoReturn:
    """Exit with status 2: the gate could not compare anything."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository importable (``tests.compat``)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def server_problem(server: str) -> str | None:
    """Why ``server`` cannot be used (``None`` when it answers).

    Connects the way Django's runner does before it creates the test databases
    (PostgreSQL's ``postgres`` database, MySQL without one): the database named in
    the URL need not exist.
    """
    probe = "import django; django.setup(); from django.db import connection\n"
    probe += "with connection._nodb_cursor(): pass"
    env = _env(DJANGO_SETTINGS_MODULE=f"tests.compat.plain_{server}")
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "no answer within 60s"
    return last_line(done.stderr) if done.returncode else None


def run_django_tests(plan: Plan, settings: str, report: Path) -> Report:
    """Run ``runtests.py`` with ``tests.compat.<settings>``; return its report."""
    report.unlink(missing_ok=True)
    env = _env(**{REPORT_ENV: str(report)})
    command = [
        sys.executable,
        str(plan.tests_dir / "runtests.py"),
        f"--settings=tests.compat.{settings}",
        f"--parallel={plan.parallel}",
        "--noinput",
        *plan.labels,
    ]
    print(f"\n=== {settings}: runtests.py {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    # Its own process group: a timeout also ends the parallel workers and test servers.
    process = subprocess.Popen(command, cwd=plan.tests_dir, env=env, start_new_session=True)
    try:
        returncode = process.wait(timeout=plan.timeout)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if not report.exists():
        stop(f"runtests.py with {settings} ended (exit {returncode}) before running tests")
    result: Report = json.loads(report.read_text())
    result["seconds"] = round(time.monotonic() - started)
    return result


def baseline(plan: Plan, server: str, like: Report, *, fresh: bool) -> Report:
    """The run without forksafe, from the cache when one matches ``like``'s environment."""
    key = {name: like[name] for name in ("django", "python", "server")}
    key.update(labels=sorted(plan.labels), parallel=plan.parallel)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cached = plan.cache / f"baseline-{server}-{digest}.json"
    if cached.exists() and not fresh:
        print(f"\n=== plain_{server}: the baseline cached in {cached}", flush=True)
        result: Report = json.loads(cached.read_text())
        return result
    result = run_django_tests(plan, f"plain_{server}", cached)
    cached.write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def summary(report: Report) -> str:
    """``N run, S skipped, F failed in Ts``."""
    seconds = f" in {report['seconds']}s" if "seconds" in report else ""
    return (
        f"{report['tests_run']} run, {report['skipped']} skipped,"
        f" {len(report['failed'])} failed{seconds}"
    )


def last_line(traceback: str) -> str:
    """The exception line of a formatted traceback."""
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def gate(plan: Plan, server: str, *, fresh: bool) -> list[str] | None:
    """Run ``server``'s gate: the ids of the tests that fail only with forksafe, or ``None``.

    A server that does not answer skips its gate, except under ``CI`` (any
    non-empty value), where that is an error: CI must not pass without it.
    """
    problem = server_problem(server)
    if problem:
        message = f"{server}: no database server ({problem}); set {URL_ENV[server]}"
        if os.environ.get("CI"):
            stop(message)
        print(f"skipped {message}", flush=True)
        return None
    report = plan.cache / f"last-forksafe-{server}.json"
    with_forksafe = run_django_tests(plan, f"forksafe_{server}", report)
    print(f"\n{server}, with forksafe: {summary(with_forksafe)} ({with_forksafe['server']})")
    if not with_forksafe["failed"] and not fresh:
        return []
    without = baseline(plan, server, with_forksafe, fresh=fresh)
    print(f"{server}, without forksafe: {summary(without)}")
    for test_id in sorted(with_forksafe["failed"].keys() & without["failed"].keys()):
        print(f"  fails without forksafe too (not forksafe's): {test_id}")
    for test_id in sorted(without["failed"].keys() - with_forksafe["failed"].keys()):
        print(f"  fails only without forksafe: {test_id}")
    only = sorted(with_forksafe["failed"].keys() - without["failed"].keys())
    for test_id in only:
        print(
            f"  FAILS ONLY WITH FORKSAFE: {test_id}\n"
            f"    {last_line(with_forksafe['failed'][test_id])}"
        )
    return only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.compat.gate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "servers", nargs="*", metavar="SERVER", help="postgresql and/or mysql (default: both)"
    )
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels",
        nargs="+",
        default=list(LABELS),
        help="Django test labels (default: %(default)s)",
    )
    labels.add_argument(
        "--all", action="store_const", dest="labels", const=[], help="Django's whole test-suite"
    )
    parser.add_argument("--parallel", type=int, default=2, help="runtests.py --parallel")
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the sdist and the baselines are kept",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=RUN_TIMEOUT,
        help="seconds one runtests.py run may take (default: %(default)s)",
    )
    parser.add_argument(
        "--fresh-baseline",
        action="store_true",
        help="always run (and re-cache) the baseline without forksafe",
    )
    args = parser.parse_args(argv)
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server {', '.join(sorted(unknown))}: choose postgresql or mysql")
    cache = args.cache.resolve()  # runtests.py runs in the sdist's tests/ directory
    plan = Plan(django_tests(cache), args.labels, args.parallel, args.timeout, cache)
    failed = {
        server: gate(plan, server, fresh=args.fresh_baseline) for server in args.servers or SERVERS
    }
    if any(failed.values()):
        print("\nForksafe breaks Django's own tests:")
        for server, test_ids in failed.items():
            print("".join(f"  {server}: {test_id}\n" for test_id in test_ids or ()), end="")
        return 1
    skipped = [server for server, test_ids in failed.items() if test_ids is None]
    print("\nNo test fails only with forksafe", end="")
    print(f" (skipped: {', '.join(skipped)})." if skipped else ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
