"""The demo's engine: real fork, pool and thread scenarios, each in a fresh interpreter.

``forksafe demo`` prints what they measure; the tests run the same scenarios
to check what the demo shows. Each scenario runs in its own
``python -m forksafe.demo._scenarios`` process so that the child can exit the
way real programs do (``sys.exit`` with interpreter finalization, an uncaught
exception, SIGKILL...) and so that "plain Django" really is plain:
``install()`` is never called in that mode.

The scenario process prints one JSON object on its last stdout line; see
:class:`Result`. Nothing here is simulated: backend ids come from the server
(``pg_backend_pid()``, ``CONNECTION_ID()``), session counts from
``pg_stat_activity`` / ``information_schema.PROCESSLIST``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from forksafe._sessions import backend_id, count_sessions, quiet_sessions, settle_sessions
from forksafe._urls import configure_django

__all__ = ["EXIT_PATHS", "MODES", "SCENARIOS", "Result", "run"]

EXIT_PATHS = ("os_exit", "sys_exit", "exception", "sigkill", "close_all", "orm")
#: How a scenario runs: ``plain`` Django, ``forksafe`` (``install()``), or ``manual``
#: (no ``install()``: the child calls ``forksafe.after_fork_in_child()`` itself).
#: The demo's tables compare the first two (``forksafe.demo.COMPARED_MODES``).
MODES = ("plain", "forksafe", "manual")
SCENARIOS = (
    "fork",
    "fork_thread",
    "fork_pool",
    "mp_pool",
    "threads",
    "threads_any",
    "executor",
    "threads_timeline",
    "ping",
    "rq",
)
#: Where the ``rq`` scenario queues its jobs (a queue name of its own in that database).
REDIS_URL = os.environ.get("FORKSAFE_DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")
RQ_JOBS = 5
_MODULE = "forksafe.demo._scenarios"


@dataclass
class Result:
    """What one scenario run measured."""

    scenario: str
    mode: str
    vendor: str = ""
    driver: str = ""
    parent_error: str | None = None
    parent_same_session: bool | None = None
    child_own_session: bool | None = None
    child_error: str | None = None
    thread_same_session: bool | None = None
    pool_lost: int | None = None
    sessions_before: int | None = None
    sessions_after: int | None = None
    abandoned: int | None = None  # sessions the server saw end without a goodbye
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sessions_left(self) -> int | None:
        if self.sessions_before is None or self.sessions_after is None:
            return None
        return self.sessions_after - self.sessions_before


# --- the child ----------------------------------------------------------------------------


def _child(exit_path: str, parent_backend: int, report_fd: int, mode: str) -> None:
    """Runs in the forked child. Never returns normally."""
    from django.db import connections

    report: dict[str, Any] = {}
    try:
        if mode == "manual":
            # What a server that forks in C does: no at-fork hook ran, the
            # integration calls the child-side reset itself.
            import forksafe

            forksafe.after_fork_in_child()
        if exit_path in ("orm", "sys_exit", "exception"):
            child_backend = backend_id()
            report["child_own_session"] = child_backend != parent_backend
        if exit_path == "close_all":
            connections.close_all()
        if exit_path == "close_pool":
            connections["default"].close_pool()  # type: ignore[attr-defined]
    except Exception as exc:
        report["child_error"] = f"{type(exc).__name__}: {exc}"
    os.write(report_fd, json.dumps(report).encode())
    os.close(report_fd)
    if exit_path == "os_exit":
        os._exit(0)
    if exit_path == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if exit_path == "exception":
        raise RuntimeError("the child fails on purpose (uncaught exception)")
    # orm, close_all, close_pool, sys_exit: exit with interpreter finalization.
    sys.exit(0)


def _fork_and_wait(exit_path: str, parent_backend: int, result: Result) -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(exit_path, parent_backend, write_fd, result.mode)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    result.child_own_session = report.get("child_own_session")
    result.child_error = report.get("child_error")


def _parent_check(parent_backend: int, result: Result) -> None:
    try:
        result.parent_same_session = backend_id() == parent_backend
    except Exception as exc:
        result.parent_error = f"{type(exc).__name__}: {exc}"
        result.parent_same_session = False


# --- scenarios -----------------------------------------------------------------------------


def scenario_fork(exit_path: str, result: Result) -> None:
    """The parent holds a connection; a child exits by ``exit_path``."""
    parent_backend = backend_id()
    result.sessions_before = count_sessions()
    _fork_and_wait(exit_path, parent_backend, result)
    _parent_check(parent_backend, result)
    result.sessions_after = settle_sessions(result.sessions_before)


def scenario_fork_thread(exit_path: str, result: Result) -> None:
    """Another thread of the parent holds a connection during the fork."""
    from django.db import connections

    holding, forked, checked = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def other_thread() -> None:
        try:
            seen["before"] = backend_id()
            holding.set()
            forked.wait(30)
            seen["after"] = backend_id()
        except Exception as exc:
            seen["error"] = f"{type(exc).__name__}: {exc}"
            holding.set()
        finally:
            checked.set()
            connections.close_all()

    thread = threading.Thread(target=other_thread)
    thread.start()
    holding.wait(30)
    parent_backend = backend_id()
    result.sessions_before = count_sessions()
    _fork_and_wait(exit_path, parent_backend, result)
    forked.set()
    checked.wait(30)
    thread.join(30)
    _parent_check(parent_backend, result)
    result.thread_same_session = "error" not in seen and seen.get("after") == seen.get("before")
    if "error" in seen:
        result.extra["thread_error"] = seen["error"]
    expected = None if result.sessions_before is None else result.sessions_before - 1
    result.sessions_after = settle_sessions(expected)
    if result.sessions_after is not None:
        result.sessions_after += 1  # the thread closed its own session on purpose


def scenario_fork_pool(exit_path: str, result: Result) -> None:
    """Django's native pool (PostgreSQL + psycopg 3, Django 5.1+)."""
    from django.db import connection

    parent_backend = backend_id()
    pool = connection.pool  # type: ignore[attr-defined]
    pool.wait(timeout=10)  # min_size idle connections are open
    _fork_and_wait(exit_path, parent_backend, result)
    _parent_check(parent_backend, result)
    connection.close()  # back to the pool
    before = pool.get_stats().get("connections_lost", 0)
    pool.check()
    result.pool_lost = pool.get_stats().get("connections_lost", 0) - before
    # The pool opens and retires sessions on its own schedule: counting them
    # says nothing here. ``pool_lost`` is the measure.
    result.sessions_before = None


def _pool_task(_: int) -> tuple[int, int]:
    """A worker's task in ``mp_pool``: which process and which server session ran it."""
    return os.getpid(), backend_id()


def scenario_mp_pool(exit_path: str, result: Result) -> None:
    """A ``fork`` pool after the parent used the DB: plain ``multiprocessing`` vs forksafe."""
    import multiprocessing

    parent_backend = backend_id()
    result.sessions_before = count_sessions()
    if result.mode == "forksafe":
        import forksafe

        pool = forksafe.Pool(2, context=forksafe.get_context("fork"))
    else:
        pool = multiprocessing.get_context("fork").Pool(2)
    try:
        seen = pool.map_async(_pool_task, range(20), chunksize=1).get(timeout=5)
        by_pid: dict[int, set[int]] = {}
        for pid, backend in seen:
            by_pid.setdefault(pid, set()).add(backend)
        backends = [b for bs in by_pid.values() for b in bs]
        own = parent_backend not in backends
        if result.vendor != "sqlite":
            own = own and len(backends) == len(set(backends))
        # SQLite's "backend id" is an address: two workers' handles may share one. The
        # parent's handle stays alive in each worker (in use, or parked by forksafe), so
        # no other handle there can have the parent's address.
        result.child_own_session = own
        pool.close()
    except multiprocessing.TimeoutError:
        result.child_error = "the map hung (workers stuck on a shared session)"
        result.child_own_session = False
        pool.terminate()
    except Exception as exc:
        result.child_error = f"{type(exc).__name__}: {exc}"
        pool.terminate()
    pool.join()
    _parent_check(parent_backend, result)
    result.sessions_after = settle_sessions(result.sessions_before)


def _rq_job() -> tuple[int, int]:
    return os.getpid(), backend_id()


def redis_answers() -> str | None:
    """``None`` when RQ is installed and Redis answers at :data:`REDIS_URL`; else why not."""
    try:
        import redis
        import rq  # noqa: F401 - the scenario needs it
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'forksafe[rq]')"
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"no Redis at {REDIS_URL} ({type(exc).__name__}); set FORKSAFE_DEMO_REDIS_URL"
    return None


def scenario_rq(exit_path: str, result: Result) -> None:
    """A burst RQ worker, a forked work horse per job: ``rq.Worker`` vs ``forksafe.rq.Worker``."""
    import uuid

    import rq.worker
    from django.db import connections
    from redis import Redis
    from rq import Queue

    from forksafe._sessions import abandoned_sessions

    worker_class: type[rq.worker.Worker] = rq.worker.Worker
    if result.mode == "forksafe":
        import forksafe.rq

        worker_class = forksafe.rq.Worker
    backend_id()
    # What django-rq's ``rqworker`` does before working (horses must not share it).
    connections.close_all()
    # The session just closed is still listed for a moment (the server ends it after reading
    # the goodbye): a count taken now would include it, and "left" would come out one low.
    result.sessions_before = quiet_sessions(timeout=10, stable_for=0.6)
    abandoned_before = abandoned_sessions()
    redis = Redis.from_url(REDIS_URL)
    queue = Queue(f"forksafe-demo-{uuid.uuid4().hex[:10]}", connection=redis)
    try:
        # By name: this module runs as __main__, which RQ refuses.
        jobs = [queue.enqueue(f"{_MODULE}._rq_job") for _ in range(RQ_JOBS)]
        worker_class([queue], connection=redis).work(burst=True, logging_level="WARNING")
        seen: list[Any] = [job.return_value() for job in jobs]
        if None in seen:
            result.child_error = f"{seen.count(None)} of {RQ_JOBS} jobs failed"
        elif result.vendor != "sqlite":
            result.child_own_session = len({backend for _, backend in seen}) == RQ_JOBS
    finally:
        queue.delete(delete_jobs=True)
        redis.close()
    result.sessions_after = settle_sessions(result.sessions_before)
    if abandoned_before is not None:
        time.sleep(0.5)  # a backend reports its end a moment after its client vanished
        abandoned = abandoned_sessions()
        assert abandoned is not None
        result.abandoned = abandoned - abandoned_before


def _one_query() -> None:
    backend_id()


def _proc_fd_handles(path: str) -> int | None:
    """Count this process's descriptors open on ``path``; None without ``/proc/self/fd``."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    n = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # listdir's own descriptor, closed since
            n += os.readlink(f"/proc/self/fd/{fd}") == path
    return n


def _live_sqlite_connections() -> int:
    """Count the ``sqlite3`` connections alive and open in this process (no ``/proc``)."""
    import gc
    import sqlite3

    n = 0
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection):
            try:
                obj.in_transaction  # noqa: B018 - raises on a closed connection
            except sqlite3.ProgrammingError:
                continue
            n += 1
    return n


def sqlite_handles() -> int | None:
    """Count the handles on the SQLite database file still open in this process.

    What a leaked SQLite connection holds: one descriptor on the database file
    (its -journal/-wal files come and go with transactions, so they are left out).
    Read from ``/proc/self/fd``; elsewhere, the open ``sqlite3`` connections.
    None for an in-memory database or another vendor.
    """
    from django.db import connections

    settings = connections.settings["default"]
    name = str(settings["NAME"])
    if not settings["ENGINE"].endswith("sqlite3") or name == ":memory:" or "mode=memory" in name:
        return None
    handles = _proc_fd_handles(os.path.realpath(name))
    return _live_sqlite_connections() if handles is None else handles


def _open_now(result: Result) -> int | None:
    """Server sessions now; on SQLite, the database file's handles open in this process."""
    return sqlite_handles() if result.vendor == "sqlite" else count_sessions()


def _open_after(result: Result) -> int | None:
    """:func:`_open_now` once the server has ended what was closed (SQLite closes at once)."""
    if result.vendor == "sqlite":
        return sqlite_handles()
    return settle_sessions(result.sessions_before, timeout=1.0)


def scenario_threads(exit_path: str, result: Result) -> None:
    """50 short threads, one query each, all joined; no ``gc.collect()``.

    plain: ``threading.Thread``; forksafe: ``forksafe.Thread``. ``threads_any``
    runs plain ``threading.Thread``s and, in forksafe mode, ``install(threads=True)``.
    """
    thread_class: type[threading.Thread] = threading.Thread
    if result.mode == "forksafe":
        import forksafe

        if result.scenario == "threads_any":
            forksafe.install(threads=True)
        else:
            thread_class = forksafe.Thread
    parent_backend = backend_id()
    result.sessions_before = _open_now(result)
    threads = [thread_class(target=_one_query) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _parent_check(parent_backend, result)
    result.sessions_after = _open_after(result)


def scenario_executor(exit_path: str, result: Result) -> None:
    """An 8-worker executor runs 200 queries and is shut down (``CONN_MAX_AGE=None``)."""
    from concurrent.futures import Executor, ThreadPoolExecutor

    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = None
    executor: Executor
    if result.mode == "forksafe":
        import forksafe

        executor = forksafe.ThreadPoolExecutor(8)
    else:
        executor = ThreadPoolExecutor(8)
    parent_backend = backend_id()
    result.sessions_before = _open_now(result)
    backends = set(executor.map(lambda _: backend_id(), range(200)))
    executor.shutdown(wait=True)
    result.extra["worker_sessions"] = len(backends)
    _parent_check(parent_backend, result)
    result.sessions_after = _open_after(result)


def scenario_threads_timeline(exit_path: str, result: Result) -> None:
    """Server sessions over time while 50 short threads run, and after they are joined.

    plain: ``threading.Thread``; forksafe: ``forksafe.Thread``. The threads start
    10 ms apart; each runs one query and lives 200 ms more. A sampler thread
    counts the server's sessions every ~20 ms (on a connection of its own, left
    out of the count) until 1.5 s after the last ``join()``; no ``gc.collect()``.
    ``extra`` gets ``samples`` (``[seconds, sessions]``), ``started``, ``joined``.
    """
    import gc

    thread_class: type[threading.Thread] = threading.Thread
    if result.mode == "forksafe":
        import forksafe

        thread_class = forksafe.Thread
    gc.disable()  # no collection by chance in the middle: the curve shows the threads alone
    samples: list[list[float]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sampler() -> None:
        while not stop.is_set():
            n = count_sessions()
            samples.append([round(time.monotonic() - start, 4), float(n or 0)])
            stop.wait(0.02)

    def short_task() -> None:
        backend_id()
        time.sleep(0.2)

    # 50 sessions of the previous run (another process) may still be ending. Counted
    # before the sampler starts: its own counting session would be in the baseline.
    result.sessions_before = quiet_sessions(timeout=10, stable_for=0.6)
    watcher = threading.Thread(target=sampler)
    watcher.start()
    result.extra["started"] = round(time.monotonic() - start, 4)
    threads = [thread_class(target=short_task) for _ in range(50)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    result.extra["joined"] = round(time.monotonic() - start, 4)
    time.sleep(1.5)
    stop.set()
    watcher.join()
    result.sessions_after = count_sessions()
    result.extra["samples"] = samples
    gc.enable()


def scenario_ping(exit_path: str, result: Result) -> None:
    """Connect once (5 s connect timeout); ``parent_error`` says why that failed."""
    from django.db import connections

    if connections.settings["default"]["ENGINE"].rsplit(".", 1)[-1] != "sqlite3":
        connections.settings["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
    try:
        backend_id()
    except Exception as exc:
        result.parent_error = f"{type(exc).__name__}: {str(exc).strip()}"
    finally:
        connections.close_all()


_SCENARIO_FUNCS = {
    "threads_timeline": scenario_threads_timeline,
    "ping": scenario_ping,
    "threads": scenario_threads,
    "threads_any": scenario_threads,
    "executor": scenario_executor,
    "mp_pool": scenario_mp_pool,
    "fork": scenario_fork,
    "fork_thread": scenario_fork_thread,
    "fork_pool": scenario_fork_pool,
    "rq": scenario_rq,
}


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forksafe.demo._scenarios")
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--database", required=True)
    parser.add_argument(
        "--exit", dest="exit_path", default="orm", choices=(*EXIT_PATHS, "close_pool")
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="forksafe",
        help="plain: no forksafe; forksafe: install(); manual: no install(), the child"
        " calls forksafe.after_fork_in_child() (as uWSGI's postfork integration does)",
    )
    parser.add_argument("--close-before-fork", action="store_true")
    args = parser.parse_args(argv)

    driver = configure_django(args.database, pool=args.scenario == "fork_pool")
    if args.mode == "forksafe":
        import forksafe

        forksafe.install(close_before_fork=args.close_before_fork)
    elif args.mode == "manual":
        import forksafe  # noqa: F401 - imported in the parent, never installed
    import django

    django.setup()
    from django.db import connection

    result = Result(scenario=args.scenario, mode=args.mode, vendor=connection.vendor, driver=driver)
    _SCENARIO_FUNCS[args.scenario](args.exit_path, result)
    data = asdict(result)
    data["sessions_left"] = result.sessions_left
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()
    return 0


def run(
    scenario: str,
    database: str,
    *,
    exit_path: str = "orm",
    mode: str = "forksafe",
    close_before_fork: bool = False,
    timeout: float = 60,
) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter and return what it measured.

    Raises ``RuntimeError`` with the process's stderr when it printed no result.
    """
    cmd = [
        sys.executable,
        "-m",
        "forksafe.demo._scenarios",
        scenario,
        "--database",
        database,
        "--exit",
        exit_path,
        "--mode",
        mode,
    ]
    if close_before_fork:
        cmd.append("--close-before-fork")
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"scenario {scenario} ({mode}, exit={exit_path}) failed with code"
            f" {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    data: dict[str, Any] = json.loads(lines[-1])
    data["stderr"] = proc.stderr
    return data


if __name__ == "__main__":
    sys.exit(_main())
