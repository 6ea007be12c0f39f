"""Shared set-up of the real uWSGI and gunicorn server tests (test_uwsgi.py, test_gunicorn.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from forksafe._sessions import quiet_sessions
from tests.harness.ci import skip_or_fail
from uwsgi_examples.load import LoadResult, get
from uwsgi_examples.run import Server, migrate, missing

SERVER_DRIVERS = ("psycopg", "mysqlclient")
WORKERS = 4


def require_server(program: str, db_url: str, driver: str) -> str:
    """Skip (or, with CI set, fail) what cannot run; migrate the example project's database."""
    if driver not in SERVER_DRIVERS:
        pytest.skip(
            f"{program} server tests run for {' and '.join(SERVER_DRIVERS)} only (the"
            " hooks are driver-independent; the detach per driver is tested elsewhere)"
        )
    reason = missing(program)
    if reason is not None:
        skip_or_fail(reason)
    migrate(db_url)
    return db_url


def session_baseline(example_db: str) -> Iterator[int]:
    """Server sessions before the test's server starts (this process holds none)."""
    from django.db import connections

    connections.close_all()
    n = quiet_sessions()  # sessions of an earlier server may still be ending
    assert n is not None
    yield n
    connections.close_all()


def assert_own_sessions(result: LoadResult, *, workers: int | None = None) -> None:
    """No error; every worker on its own session(s), none on the loader's."""
    assert not result.errors, result.summary()
    if workers is not None:
        assert len(result.pids) == workers, result.summary()
    assert result.on_loader_session == 0, result.summary()
    assert result.shared_backends == {}, result.summary()


def backends_of(result: LoadResult, pids: set[int]) -> set[int]:
    """The server sessions that the workers ``pids`` answered on."""
    return {b for pid, backends in result.backends_by_pid.items() if pid in pids for b in backends}


def wait_for_new_workers(server: Server, old_pids: set[int], timeout: float = 30) -> None:
    """After a graceful reload: wait until a request is answered by a worker not in ``old_pids``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(server.url, timeout=2)["pid"] not in old_pids:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
