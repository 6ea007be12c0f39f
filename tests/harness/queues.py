"""Running real ``rq worker`` and ``celery worker`` processes from the tests, with deadlines.

Workers run as :class:`~tests.harness.processes.ManagedProcess` subprocesses
(burst runs: :func:`run_worker`) with this worktree first on ``PYTHONPATH``, the
run's driver settings (``tests.queues.settings`` on top of them) and a Redis
database of their own (``FORKSAFE_TEST_REDIS_URL``, default database 5) with
a queue name unique to each test. Closing "cleanly" is judged by the server's
own counter of abandoned sessions (PostgreSQL ``sessions_abandoned`` of the
test database, MariaDB's global ``Aborted_clients``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.harness.processes import ManagedProcess
from tests.harness.scripts import ROOT

REDIS_URL = os.environ.get("FORKSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
HEAVY_DRIVERS = ("psycopg", "mysqlclient")


def require_redis() -> None:
    """Skip when Redis does not answer -- fail instead when ``CI`` is set."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        message = f"no Redis at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and Redis is missing: {message}. Start it (see .ci/run).")
        pytest.skip(message)


def require_heavy_driver(driver: str) -> None:
    """Real worker processes cost seconds: run them for psycopg and mysqlclient only."""
    if driver not in HEAVY_DRIVERS:
        pytest.skip(
            f"real task-queue workers run for {' and '.join(HEAVY_DRIVERS)} only (CI time);"
            f" {driver} shares their code paths"
        )


def unique_name(prefix: str) -> str:
    return f"forksafe-{prefix}-{uuid.uuid4().hex[:10]}"


def worker_env(driver: str, **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess for this run's driver."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        DJANGO_SETTINGS_MODULE="tests.queues.settings",
        FORKSAFE_TEST_BASE_SETTINGS=f"tests.settings.{driver}",
        FORKSAFE_TEST_REDIS_URL=REDIS_URL,
    )
    env.update(extra)
    return env


def mode_env(*, plain: bool, conn_max_age: str | None) -> dict[str, str]:
    """What a worker of ``tests.queues`` reads: ``plain`` (without forksafe's Django app) and
    its ``CONN_MAX_AGE`` (a Python literal, e.g. ``"None"``; ``None``: the settings')."""
    env = {"FORKSAFE_TEST_PLAIN": "1"} if plain else {}
    if conn_max_age is not None:
        env["FORKSAFE_TEST_CONN_MAX_AGE"] = conn_max_age
    return env


def run_worker(args: list[str], env: dict[str, str], timeout: float = 90) -> str:
    """Run a worker to its end (burst mode); fail the test with its output if it fails."""
    try:
        proc = subprocess.run(
            args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args[:4]} did not finish within {timeout}s:\n{exc.stderr!r}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


class Worker(ManagedProcess):
    """A long-running worker (``args``, from the checkout); :meth:`shutdown` stops it.

    SIGTERM is a warm shutdown for both Celery and RQ: the worker finishes its
    task and ends.
    """

    name = "the worker"
    cwd = ROOT

    def shutdown(self, timeout: float = 60) -> str:
        """Warm shutdown (fails the test if it takes over ``timeout`` s); the worker's output."""
        if self.running and self.stop(timeout) is None:
            pytest.fail(f"{self.name} did not stop within {timeout}s:\n{self.log(6000)}")
        return self.log(tail=None)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class CeleryWorker(Worker):
    """A real ``celery worker`` on a queue of its own, started, and a client to call its tasks.

    ``mode``: see ``tests.queues.celery_app``; ``plain``: without forksafe's Django app.
    :meth:`shutdown` is a warm shutdown (SIGTERM).
    """

    def __init__(
        self,
        driver: str,
        *,
        mode: str,
        pool: str = "prefork",
        concurrency: int = 1,
        max_tasks_per_child: int | None = None,
        conn_max_age: str | None = "None",
        plain: bool = False,
    ) -> None:
        from celery import Celery

        self.queue = unique_name("celery")
        env = worker_env(
            driver,
            **mode_env(plain=plain, conn_max_age=conn_max_age),
            FORKSAFE_TEST_CELERY_MODE=mode,
        )
        args = python_module(
            "celery",
            "-A",
            "tests.queues.celery_app",
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--queues",
            self.queue,
            "--hostname",
            f"{self.queue}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        )
        if max_tasks_per_child is not None:
            args += ["--max-tasks-per-child", str(max_tasks_per_child)]
        self.client = Celery("forksafe_test_client", broker=REDIS_URL, backend=REDIS_URL)
        super().__init__(args, env)
        self.start()

    def _result(self, name: str, args: tuple[Any, ...], timeout: float) -> Any:
        from celery.exceptions import TimeoutError as CeleryTimeout

        result = self.client.send_task(
            f"tests.queues.celery_app.{name}", args=list(args), queue=self.queue
        )
        try:
            result.get(timeout=timeout, propagate=False)
        except CeleryTimeout:
            pytest.fail(f"task {name} got no result within {timeout}s:\n{self.shutdown()[-6000:]}")
        return result

    def call(self, name: str, *args: Any, timeout: float = 60) -> Any:
        """Run task ``name``; return its result (JSON lists become tuples)."""
        result = self._result(name, args, timeout)
        assert result.successful(), f"{name} failed: {result.result!r}"
        value = result.result
        return tuple(value) if isinstance(value, list) else value

    def fail(self, name: str, *args: Any, timeout: float = 60) -> str:
        """Run task ``name``, which must fail; return the name of its exception's class."""
        result = self._result(name, args, timeout)
        assert result.failed(), f"{name} did not fail: {result.result!r}"
        return type(result.result).__name__

    def shutdown(self, timeout: float = 60) -> str:
        """Warm shutdown; the worker's output."""
        was_running = self.running
        output = super().shutdown(timeout)
        if was_running:
            self.client.close()
        return output


class DramatiqWorker(Worker):
    """A real ``dramatiq`` worker (processes x threads) on a queue of its own, and a client.

    ``mode``: see ``tests.queues.dramatiq_app``; ``plain``: without forksafe's Django app.
    """

    def __init__(
        self,
        driver: str,
        *,
        mode: str = "forksafe",
        processes: int = 1,
        threads: int = 1,
        conn_max_age: str | None = "None",
        plain: bool = False,
    ) -> None:
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.results.backends import RedisBackend

        self.queue = unique_name("dramatiq")
        env = worker_env(
            driver,
            **mode_env(plain=plain, conn_max_age=conn_max_age),
            FORKSAFE_TEST_DRAMATIQ_MODE=mode,
            FORKSAFE_TEST_DRAMATIQ_QUEUE=self.queue,
        )
        args = python_module(
            "dramatiq",
            "tests.queues.dramatiq_app",
            "--processes",
            str(processes),
            "--threads",
            str(threads),
            "--queues",
            self.queue,
        )
        self.client = RedisBroker(url=REDIS_URL, middleware=[])  # type: ignore[no-untyped-call]
        self.results = RedisBackend(url=REDIS_URL)
        super().__init__(args, env)
        self.start()

    def send(self, actor: str, *args: Any) -> Any:
        """Enqueue a message for ``actor``; the message, to wait on with :meth:`result`."""
        from dramatiq import Message

        message: Message[Any] = Message(
            queue_name=self.queue, actor_name=actor, args=args, kwargs={}, options={}
        )
        return self.client.enqueue(message)

    def result(self, message: Any, timeout: float = 60) -> tuple[bool, Any]:
        """(succeeded, result or the name of the exception's class) of a sent message."""
        from dramatiq.results import ResultFailure, ResultTimeout

        try:
            value = message.get_result(backend=self.results, block=True, timeout=timeout * 1000)
        except ResultFailure as exc:
            return False, exc.orig_exc_type
        except ResultTimeout:
            pytest.fail(
                f"{message.actor_name} got no result within {timeout}s:\n{self.shutdown()[-6000:]}"
            )
        return True, tuple(value) if isinstance(value, list) else value

    def call(self, actor: str, *args: Any, timeout: float = 60) -> Any:
        """Run ``actor``; its result (JSON lists become tuples)."""
        ok, value = self.result(self.send(actor, *args), timeout)
        assert ok, f"{actor} failed: {value}"
        return value

    def fail(self, actor: str, *args: Any, timeout: float = 60) -> str:
        """Run ``actor``, which must fail; the name of its exception's class."""
        ok, value = self.result(self.send(actor, *args), timeout)
        assert not ok, f"{actor} did not fail: {value!r}"
        return str(value)

    def shutdown(self, timeout: float = 60, sig: int = signal.SIGTERM) -> str:
        """Stop the worker with ``sig`` (SIGTERM and SIGINT are both warm); its output."""
        was_running = self.running
        if was_running and self.stop(timeout, sig) is None:
            pytest.fail(f"{self.name} did not stop within {timeout}s:\n{self.log(6000)}")
        if was_running:
            self.client.close()
        return self.log(tail=None)[-6000:]


W = TypeVar("W", bound=Worker)


def worker_starter(cls: Callable[..., W], driver: str) -> Iterator[Callable[..., W]]:
    """For a fixture: yield ``start(**options)``, which starts a ``cls`` worker; stop them all.

    Skips unless the driver runs real workers and Redis answers (fails instead under CI).
    """
    require_heavy_driver(driver)
    require_redis()
    started: list[W] = []

    def start(**options: Any) -> W:
        worker = cls(driver, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.shutdown()


class HueyWorker(Worker):
    """A real ``huey_consumer`` (``-k thread`` or ``-k process``) on a Huey of its own.

    ``mode``: see ``tests.queues.huey_app``; ``plain``: without forksafe's Django app.
    :meth:`shutdown` sends ``SIGTERM`` (Huey: stop now; ``SIGINT`` is its graceful stop).
    """

    def __init__(
        self,
        driver: str,
        *,
        mode: str = "forksafe",
        kind: str = "thread",
        workers: int = 1,
        conn_max_age: str | None = "None",
        plain: bool = False,
    ) -> None:
        from huey import RedisHuey

        self.queue = unique_name("huey")
        env = worker_env(
            driver,
            **mode_env(plain=plain, conn_max_age=conn_max_age),
            FORKSAFE_TEST_HUEY_MODE=mode,
            FORKSAFE_TEST_HUEY_NAME=self.queue,
        )
        args = python_module(
            "huey.bin.huey_consumer",
            "tests.queues.huey_app.huey",
            "--worker-type",
            kind,
            "--workers",
            str(workers),
            "--no-periodic",
            "--delay",
            "0.05",
            "--max-delay",
            "0.2",
        )
        self.client = RedisHuey(self.queue, url=REDIS_URL)
        self._tasks: dict[str, Any] = {}
        super().__init__(args, env)
        self.start()

    def _stub(self, name: str) -> Any:
        """A client-side task that enqueues the worker's ``tests.queues.huey_app.<name>``."""
        if name not in self._tasks:

            def task(*args: Any) -> None:
                raise AssertionError("runs in the worker")

            task.__module__ = "tests.queues.huey_app"
            self._tasks[name] = self.client.task(name=name)(task)
        return self._tasks[name]

    def send(self, name: str, *args: Any) -> Any:
        """Enqueue task ``name``; its result handle, to wait on with :meth:`result`."""
        return self._stub(name)(*args)

    def result(self, handle: Any, timeout: float = 60) -> tuple[bool, Any]:
        """(succeeded, result or the ``repr`` of the exception) of a sent task."""
        from huey.exceptions import HueyException, TaskException

        try:
            value = handle.get(blocking=True, timeout=timeout)
        except TaskException as exc:
            return False, str(exc.metadata.get("error"))
        except HueyException:
            pytest.fail(f"a Huey task got no result within {timeout}s:\n{self.shutdown()[-6000:]}")
        return True, tuple(value) if isinstance(value, list) else value

    def call(self, name: str, *args: Any, timeout: float = 60) -> Any:
        """Run task ``name``; its result (lists become tuples)."""
        ok, value = self.result(self.send(name, *args), timeout)
        assert ok, f"{name} failed: {value}"
        return value

    def fail(self, name: str, *args: Any, timeout: float = 60) -> str:
        """Run task ``name``, which must fail; the ``repr`` of its exception."""
        ok, value = self.result(self.send(name, *args), timeout)
        assert not ok, f"{name} did not fail: {value!r}"
        return str(value)

    def shutdown(self, timeout: float = 60, sig: int = signal.SIGTERM) -> str:
        """Stop the consumer with ``sig``; its output."""
        was_running = self.running
        if was_running and self.stop(timeout, sig) is None:
            pytest.fail(f"{self.name} did not stop within {timeout}s:\n{self.log(6000)}")
        return self.log(tail=None)[-6000:]


class DbTasksWorker(Worker):
    """A real ``django-tasks-db`` ``db_worker`` on a queue of its own, and a client to run tasks.

    The test process enqueues through the same database backend (``tests.queues.tasks_settings``
    applied with ``override_settings`` by the test module); ``plain``: without forksafe's
    Django app (then nothing of forksafe runs in the worker).
    """

    name = "db_worker"

    def __init__(
        self, driver: str, *, conn_max_age: str | None = "None", plain: bool = False
    ) -> None:
        self.queue = unique_name("tasks")
        env = worker_env(
            driver,
            **mode_env(plain=plain, conn_max_age=conn_max_age),
            DJANGO_SETTINGS_MODULE="tests.queues.tasks_settings",
            PYTHONUNBUFFERED="1",
        )
        args = python_module(
            "django",
            "db_worker",
            "--queue-name",
            self.queue,
            "--interval",
            "0.05",
            "--no-startup-delay",
            "--no-reload",
        )
        super().__init__(args, env)
        self.start()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "Starting worker" not in self.log():
            self.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def send(self, name: str, *args: Any) -> Any:
        """Enqueue task ``name`` of ``tests.queues.django_tasks_app``; its ``TaskResult``."""
        from tests.queues import django_tasks_app

        task = getattr(django_tasks_app, name)
        return task.using(queue_name=self.queue).enqueue(*args)

    def wait(self, result: Any, timeout: float = 60, *, status: str = "finished") -> Any:
        """Wait until ``result`` is running (``status="running"``) or finished; the result."""
        from django.tasks import TaskResultStatus

        wanted = (
            {TaskResultStatus.RUNNING}
            if status == "running"
            else {TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED}
        )
        deadline = time.monotonic() + timeout
        while True:
            result.refresh()
            if result.status in wanted:
                return result
            if time.monotonic() > deadline:
                pytest.fail(
                    f"task {result.task.module_path} still {result.status} after {timeout}s:\n"
                    f"{self.shutdown()[-6000:]}"
                )
            time.sleep(0.05)

    def call(self, name: str, *args: Any, timeout: float = 60) -> Any:
        """Run task ``name``; its return value (lists become tuples)."""
        result = self.wait(self.send(name, *args), timeout)
        assert result.status == "SUCCESSFUL", f"{name} failed: {result.errors}\n{self.log(4000)}"
        value = result.return_value
        return tuple(value) if isinstance(value, list) else value

    def fail(self, name: str, *args: Any, timeout: float = 60) -> str:
        """Run task ``name``, which must fail; the name of its exception's class."""
        result = self.wait(self.send(name, *args), timeout)
        assert result.status == "FAILED", f"{name} did not fail: {result.return_value!r}"
        return str(result.errors[-1].exception_class_path.rpartition(".")[2])


@contextlib.contextmanager
def django_tasks_db_backend() -> Iterator[None]:
    """In this process: django-tasks-db's app, its backend as ``default``, its table (dropped
    at the end) -- what enqueues to a ``db_worker`` of ``tests.queues.tasks_settings``."""
    from django.conf import settings
    from django.db import connection
    from django.test import override_settings

    from tests.queues import tasks_backend

    overrides = override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, tasks_backend.APP], TASKS=tasks_backend.TASKS
    )
    overrides.enable()
    try:
        from django_tasks_db.models import DBTaskResult

        with connection.schema_editor() as editor:
            if DBTaskResult._meta.db_table in connection.introspection.table_names():
                editor.delete_model(DBTaskResult)
            editor.create_model(DBTaskResult)
        try:
            yield
        finally:
            with connection.schema_editor() as editor:
                editor.delete_model(DBTaskResult)
    finally:
        connection.close()
        overrides.disable()
