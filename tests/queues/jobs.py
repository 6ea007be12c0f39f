"""RQ jobs: they set Django up themselves, as jobs of a plain ``rq worker`` must."""

from __future__ import annotations

import os


def _django() -> None:
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


def query(alias: str = "default") -> tuple[int, int]:
    """Which process and which server session ran this job."""
    _django()
    from forksafe._sessions import backend_id

    return os.getpid(), backend_id(alias)


def slow_query(seconds: int) -> None:
    """A query that outlives the job's timeout."""
    _django()
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_sleep(%s)", [seconds])
        else:
            cursor.execute("SELECT SLEEP(%s)", [seconds])


class TaskTimeout(Exception):
    """A task's own time limit, raised by a signal handler (here in the middle of a query)."""


def _timeout(signum: int, frame: object) -> None:
    raise TaskTimeout("the task's time limit passed")


def interrupted_query(seconds: int) -> None:
    """A query interrupted after 1 s by ``SIGALRM`` (workers that run jobs in the main thread)."""
    import signal

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        slow_query(seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def database_error() -> None:
    """A query the server refuses."""
    _django()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM forksafe_no_such_table")
