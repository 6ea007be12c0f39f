"""P6: task-queue throughput -- Celery and Huey tasks/s, RQ jobs/s, with and without forksafe.

Real workers, started once each; then ``--repeat`` interleaved rounds send the same batch to
each in turn and time it until every result is back. Every task/job runs one ``SELECT``
through Django's ``default`` alias (``CONN_MAX_AGE=None`` where the mode allows reuse).

Celery (prefork, ``--concurrency`` processes), three modes:

* ``forksafe``: ``forksafe.celery.install(app)`` with ``CONN_MAX_AGE=None``: one session per
  pool process, reused;
* ``celery``: Celery's own Django fixup (it closes every connection before and after every
  task, whatever ``CONN_MAX_AGE`` says);
* ``close-per-task``: forksafe with Django's default ``CONN_MAX_AGE=0``: Django's rules close
  the connection after each task.

RQ (a forked horse per job either way): ``forksafe.rq.Worker`` (sets Django up before
forking) vs ``plain rq``, an ``rq.Worker`` that sets Django up before forking too (as
django-rq's ``rqworker`` does), and ``plain rq CLI``, ``rq worker`` as it comes, where each
horse sets Django up for its job. The plain workers run without forksafe's app. The
sessions each abandoned over the run are counted by the server.

Huey (``huey_consumer -k thread`` or ``-k process``, ``--concurrency`` workers, plain
``@task``): ``forksafe`` (``forksafe.huey.install(huey)``) vs ``plain huey`` (no forksafe,
nothing closes a connection: the upper bound), both ``CONN_MAX_AGE=None``. The sessions each
consumer abandoned at its ``SIGTERM`` stop are counted by the server.

Dramatiq (``dramatiq``, 1 process x ``--concurrency`` threads, Redis): ``forksafe``
(``forksafe.dramatiq.ConnectionsMiddleware``) vs ``DbConnectionsMiddleware`` (django_dramatiq's
``close_old_connections()`` around each message, as users run it), both ``CONN_MAX_AGE=None``.
The sessions each worker abandoned at its ``SIGTERM`` stop are counted by the server.

django-tasks-db's ``db_worker`` (Django 6.x, ``--only db_worker``; run by default there):
with the forksafe app (``forksafe.tasks``: the rules around each task) vs plain.

Uses the test-suite's worker harness (``tests.harness.queues``, importable from a checkout),
Redis database 5 and the database of ``tests.settings.DRIVER`` (``FORKSAFE_TEST_POSTGRES_URL`` /
``FORKSAFE_TEST_MYSQL_URL``)::

    PYTHONPATH=. python benchmarks/queues_bench.py --driver psycopg
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

CELERY_MODES = {  # name: (mode, CONN_MAX_AGE, without forksafe's app)
    "forksafe": ("forksafe", "None", False),
    "celery": ("celery", "None", True),
    "close-per-task": ("forksafe", "0", False),
}


def _celery_round(worker: Any, n: int) -> float:
    start = time.perf_counter()
    results = [
        worker.client.send_task("tests.queues.celery_app.query", queue=worker.queue)
        for _ in range(n)
    ]
    for result in results:
        result.get(timeout=120)
    return n / (time.perf_counter() - start)


def bench_celery(driver: str, n: int, repeat: int, concurrency: int) -> None:
    from tests.harness.queues import CeleryWorker

    workers = {
        name: CeleryWorker(
            driver, mode=mode, concurrency=concurrency, conn_max_age=age, plain=plain
        )
        for name, (mode, age, plain) in CELERY_MODES.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in workers}
    try:
        for worker in workers.values():
            _celery_round(worker, concurrency * 4)  # every pool process is up
        for _ in range(repeat):
            for name, worker in workers.items():
                rates[name].append(_celery_round(worker, n))
    finally:
        for worker in workers.values():
            worker.shutdown()
    ours = statistics.median(rates["forksafe"])
    print(f"Celery prefork -c {concurrency}, {n} tasks x {repeat} rounds (median tasks/s)")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<16}{median:>10.0f}   forksafe/this {ours / median:>6.2f}x")


def _rq_round(queue: Any, n: int) -> float:
    start = time.perf_counter()
    jobs = [queue.enqueue("tests.queues.jobs.query", "default") for _ in range(n)]
    limit = 60 + 10 * n  # a plain rq CLI horse sets Django up: seconds each on a busy machine
    deadline = time.monotonic() + limit
    while any(job.get_status(refresh=True) != "finished" for job in jobs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"RQ jobs did not finish within {limit} s")
        time.sleep(0.01)
    return n / (time.perf_counter() - start)


def bench_rq(driver: str, n: int, repeat: int) -> None:
    from redis import Redis
    from rq import Queue

    from tests.harness.queues import REDIS_URL, Worker, python_module, unique_name, worker_env
    from tests.harness.sessions import settled_abandoned

    classes = {  # worker class: (label, environment)
        "forksafe.rq.Worker": ("forksafe", {}),
        "tests.queues.workers.DjangoWorker": ("plain rq", {"FORKSAFE_TEST_PLAIN": "1"}),
        "rq.worker.Worker": ("plain rq CLI", {"FORKSAFE_TEST_PLAIN": "1"}),
    }
    redis = Redis.from_url(REDIS_URL)
    queues = {cls: Queue(unique_name("bench"), connection=redis) for cls in classes}
    workers = {
        cls: Worker(
            [*python_module("rq.cli", "worker", "--url", REDIS_URL, "-w", cls), queue.name],
            worker_env(driver, **classes[cls][1]),
        ).start()
        for cls, queue in queues.items()
    }
    rates: dict[str, list[float]] = {cls: [] for cls in classes}
    abandoned = dict.fromkeys(classes, 0)
    try:
        for queue in queues.values():
            _rq_round(queue, 2)  # the workers are up
        for _ in range(repeat):
            for cls, queue in queues.items():
                before = settled_abandoned()
                rates[cls].append(_rq_round(queue, n))
                abandoned[cls] += settled_abandoned() - before
    finally:
        for worker in workers.values():
            worker.shutdown()
        for queue in queues.values():
            queue.delete(delete_jobs=True)
        redis.close()
    ours = statistics.median(rates["forksafe.rq.Worker"])
    print(f"RQ Worker (a horse per job), {n} jobs x {repeat} rounds (median jobs/s)")
    for cls, values in rates.items():
        median = statistics.median(values)
        print(
            f"  {classes[cls][0]:<16}{median:>10.1f}   forksafe/this {ours / median:>6.2f}x"
            f"   abandoned sessions {abandoned[cls]} of {n * repeat} jobs"
        )


HUEY_MODES = {"forksafe": ("forksafe", False), "plain huey": ("plain", True)}


def _huey_round(worker: Any, n: int) -> float:
    start = time.perf_counter()
    handles = [worker.send("query") for _ in range(n)]
    for handle in handles:
        handle.get(blocking=True, timeout=120)
    return n / (time.perf_counter() - start)


def bench_huey(driver: str, n: int, repeat: int, concurrency: int, kind: str) -> None:
    from tests.harness.queues import HueyWorker
    from tests.harness.sessions import abandoned_after, settled_abandoned

    workers = {
        name: HueyWorker(driver, mode=mode, kind=kind, workers=concurrency, plain=plain)
        for name, (mode, plain) in HUEY_MODES.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in workers}
    abandoned = dict.fromkeys(workers, 0)
    try:
        for worker in workers.values():
            _huey_round(worker, concurrency * 4)  # every worker is up
        for _ in range(repeat):
            for name, worker in workers.items():
                rates[name].append(_huey_round(worker, n))
        for name, worker in workers.items():
            before = settled_abandoned()
            worker.shutdown()
            abandoned[name] = abandoned_after(before, timeout=3) - before
    finally:
        for worker in workers.values():
            worker.shutdown()
    ours = statistics.median(rates["forksafe"])
    print(f"Huey -k {kind} -w {concurrency}, {n} tasks x {repeat} rounds (median tasks/s)")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"  {name:<16}{median:>10.0f}   forksafe/this {ours / median:>6.2f}x"
            f"   abandoned at SIGTERM {abandoned[name]}"
        )


DRAMATIQ_MODES = {"forksafe": "forksafe", "DbConnectionsMiddleware": "django"}


def _dramatiq_round(worker: Any, n: int) -> float:
    start = time.perf_counter()
    messages = [worker.send("query") for _ in range(n)]
    for message in messages:
        worker.result(message, timeout=120)
    return n / (time.perf_counter() - start)


def bench_dramatiq(driver: str, n: int, repeat: int, concurrency: int) -> None:
    from tests.harness.queues import DramatiqWorker
    from tests.harness.sessions import abandoned_after, settled_abandoned

    workers = {
        name: DramatiqWorker(driver, mode=mode, threads=concurrency)
        for name, mode in DRAMATIQ_MODES.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in workers}
    abandoned = dict.fromkeys(workers, 0)
    try:
        for worker in workers.values():
            _dramatiq_round(worker, concurrency * 4)  # every worker thread is up
        for _ in range(repeat):
            for name, worker in workers.items():
                rates[name].append(_dramatiq_round(worker, n))
        for name, worker in workers.items():
            before = settled_abandoned()
            worker.shutdown()
            abandoned[name] = abandoned_after(before, timeout=3) - before
    finally:
        for worker in workers.values():
            worker.shutdown()
    ours = statistics.median(rates["forksafe"])
    print(f"Dramatiq 1 x {concurrency} threads, {n} messages x {repeat} rounds (median msgs/s)")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"  {name:<24}{median:>10.0f}   forksafe/this {ours / median:>6.2f}x"
            f"   abandoned at SIGTERM {abandoned[name]}"
        )


def _db_worker_round(worker: Any, n: int) -> float:
    from django.tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    start = time.perf_counter()
    ids = [worker.send("query").id for _ in range(n)]
    done = [TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED]
    deadline = time.monotonic() + 60 + n
    while DBTaskResult.objects.filter(id__in=ids, status__in=done).count() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"db_worker tasks did not finish within {60 + n} s")
        time.sleep(0.01)
    failed = DBTaskResult.objects.filter(id__in=ids, status=TaskResultStatus.FAILED).count()
    if failed:
        raise RuntimeError(f"{failed} of {n} db_worker tasks failed")
    return n / (time.perf_counter() - start)


def bench_db_worker(driver: str, n: int, repeat: int) -> None:
    """django-tasks-db's ``db_worker`` (Django 6.x): with the forksafe app vs plain."""
    from tests.harness.queues import DbTasksWorker, django_tasks_db_backend
    from tests.harness.sessions import settled_abandoned

    modes = {"forksafe": False, "plain db_worker": True}  # name: without forksafe's app
    with django_tasks_db_backend():
        workers = {name: DbTasksWorker(driver, plain=plain) for name, plain in modes.items()}
        rates: dict[str, list[float]] = {name: [] for name in modes}
        abandoned = dict.fromkeys(modes, 0)
        try:
            for worker in workers.values():
                _db_worker_round(worker, 2)
            for _ in range(repeat):
                for name, worker in workers.items():
                    before = settled_abandoned()
                    rates[name].append(_db_worker_round(worker, n))
                    abandoned[name] += settled_abandoned() - before
        finally:
            for worker in workers.values():
                worker.shutdown()
    ours = statistics.median(rates["forksafe"])
    print(f"db_worker (django-tasks-db), {n} tasks x {repeat} rounds (median tasks/s)")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"  {name:<16}{median:>10.1f}   forksafe/this {ours / median:>6.2f}x"
            f"   abandoned sessions {abandoned[name]} of {n * repeat} tasks"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", default="psycopg", choices=["psycopg", "mysqlclient"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--tasks", type=int, default=300, help="tasks (messages) per round: Celery, Huey, Dramatiq"
    )
    parser.add_argument("--jobs", type=int, default=30, help="RQ jobs per round")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--db-tasks", type=int, default=200, help="db_worker tasks per round")
    parser.add_argument("--only", choices=["celery", "rq", "huey", "dramatiq", "db_worker"])
    parser.add_argument("--huey-kind", default="process", choices=["thread", "process"])
    args = parser.parse_args(argv)

    os.environ["DJANGO_SETTINGS_MODULE"] = f"tests.settings.{args.driver}"
    import django

    django.setup()
    if args.only in (None, "celery"):
        bench_celery(args.driver, args.tasks, args.repeat, args.concurrency)
    if args.only in (None, "rq"):
        bench_rq(args.driver, args.jobs, args.repeat)
    if args.only in (None, "huey"):
        bench_huey(args.driver, args.tasks, args.repeat, args.concurrency, args.huey_kind)
    if args.only in (None, "dramatiq"):
        bench_dramatiq(args.driver, args.tasks, args.repeat, args.concurrency)
    if args.only == "db_worker" or (args.only is None and django.VERSION >= (6, 0)):
        bench_db_worker(args.driver, args.db_tasks, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
