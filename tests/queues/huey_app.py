"""The Huey app of the worker tests (``huey_consumer tests.queues.huey_app.huey``).

``FORKSAFE_TEST_HUEY_MODE`` picks the connection care:

* ``forksafe`` (default): ``forksafe.huey.install(huey)``;
* ``plain``: the control, Huey as it is (plain ``@task``: nothing closes connections).

The tasks listen on the Huey named ``FORKSAFE_TEST_HUEY_NAME`` (one per test) in Redis.
"""

from __future__ import annotations

import os
import threading

from huey import RedisHuey

from tests.queues import jobs

MODE = os.environ.get("FORKSAFE_TEST_HUEY_MODE", "forksafe")
NAME = os.environ.get("FORKSAFE_TEST_HUEY_NAME", "forksafe-huey")

huey = RedisHuey(NAME, url=os.environ["FORKSAFE_TEST_REDIS_URL"])
jobs._django()

if MODE == "forksafe":
    import forksafe.huey

    forksafe.huey.install(huey)


@huey.task()  # type: ignore[untyped-decorator]
def query(alias: str = "default") -> tuple[int, int, int]:
    """Which process, thread and server session ran this task."""
    pid, backend = jobs.query(alias)
    return pid, threading.get_ident(), backend


@huey.task(timeout=1)  # type: ignore[untyped-decorator]
def slow_query(seconds: int) -> None:
    """A query that outlives the task's timeout (``-k process``: ``SIGALRM``)."""
    jobs.slow_query(seconds)


@huey.task()  # type: ignore[untyped-decorator]
def long_query(seconds: int) -> None:
    """A query the worker's stop finds running."""
    jobs.slow_query(seconds)


@huey.task()  # type: ignore[untyped-decorator]
def database_error() -> None:
    """A query the server refuses."""
    jobs.database_error()
