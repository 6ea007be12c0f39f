"""forksafe under real gunicorn servers on 127.0.0.1 (``uwsgi_examples/gunicorn.conf.py``).

``preload_app = True``: the example application queries the database while it
loads in the arbiter, then gunicorn forks its workers with ``os.fork()``. The
server tests run for the psycopg and mysqlclient drivers only (see
``test_uwsgi.py``); the hooks' argument checks run for every driver.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

import forksafe.gunicorn
from forksafe._sessions import settle_sessions
from tests._prefork import (
    WORKERS,
    assert_own_sessions,
    require_server,
    session_baseline,
    wait_for_new_workers,
)
from uwsgi_examples.load import fire
from uwsgi_examples.run import Server


@pytest.fixture(scope="module")
def example_db(db_url: str, driver: str) -> str:
    return require_server("gunicorn", db_url, driver)


@pytest.fixture
def baseline(example_db: str) -> Iterator[int]:
    yield from session_baseline(example_db)


@pytest.mark.parametrize("forksafe_mode", ["1", "hook"])
def test_preloaded_sync_workers_each_get_their_own_session(
    example_db: str, baseline: int, forksafe_mode: str
) -> None:
    """``1``: forksafe.install() in wsgi.py plus the conf hooks (no double work);
    ``hook``: the gunicorn.conf.py hooks alone."""
    with Server("gunicorn", example_db, forksafe=forksafe_mode, processes=WORKERS) as server:
        result = fire(server.url, requests=1000, concurrency=32, timeout=10)
        assert_own_sessions(result, workers=WORKERS)
        assert all(len(b) == 1 for b in result.backends_by_pid.values())
        # The arbiter closed its session before forking: only the workers' remain.
        expected = baseline + WORKERS
        assert settle_sessions(expected) == expected, server.log()


def test_gthread_workers_each_get_their_own_sessions(example_db: str) -> None:
    env = {"EXAMPLE_WORKER_CLASS": "gthread", "EXAMPLE_THREADS": "4"}
    with Server("gunicorn", example_db, processes=2, env=env) as server:
        result = fire(server.url, requests=400, concurrency=16, timeout=10)
    assert_own_sessions(result, workers=2)
    assert all(len(b) <= 4 for b in result.backends_by_pid.values()), result.backends_by_pid


def test_max_requests_recycling_does_not_pile_up_sessions(example_db: str, baseline: int) -> None:
    env = {"EXAMPLE_MAX_REQUESTS": "100"}
    with Server("gunicorn", example_db, processes=WORKERS, env=env) as server:
        result = fire(server.url, requests=600, concurrency=16, timeout=10)
        assert_own_sessions(result)
        assert len(result.pids) > WORKERS, "no worker was recycled"
        # A respawned worker that got no request yet has no session: at most this many.
        expected = baseline + WORKERS
        n = settle_sessions(expected, timeout=5)
        assert n is not None and n <= expected, server.log()


def test_graceful_reload_leaves_no_extra_sessions(example_db: str, baseline: int) -> None:
    with Server("gunicorn", example_db, processes=WORKERS) as server:
        before = fire(server.url, requests=200, concurrency=16)
        assert_own_sessions(before, workers=WORKERS)
        server.signal(signal.SIGHUP)
        wait_for_new_workers(server, before.pids)
        after = fire(server.url, requests=400, concurrency=16)
        assert_own_sessions(after)
        assert not after.pids & before.pids
        expected = baseline + WORKERS
        n = settle_sessions(expected, timeout=5)
        assert n is not None and n <= expected, server.log()


def test_control_plain_django_workers_share_the_arbiter_session(
    example_db: str, baseline: int
) -> None:
    """Without forksafe the problem is real: preloaded workers use the arbiter's session."""
    with Server("gunicorn", example_db, forksafe="0", processes=WORKERS) as server:
        result = fire(server.url, requests=200, concurrency=16, timeout=3)
    assert result.on_loader_session > 0 or result.errors, result.summary()


class _Worker:
    """What gunicorn passes as ``worker`` (the attributes the check looks at)."""

    pid = 1
    age = 1
    log = None


@pytest.mark.parametrize("hook", ["pre_fork", "post_fork"])
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((object(),), {}),
        ((object(), _Worker(), object()), {}),
        ((object(),), {"worker": _Worker(), "extra": 1}),
        ((object(), "not a worker"), {}),
    ],
)
def test_server_hooks_called_wrongly_raise_type_error_naming_the_signature(
    hook: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(TypeError, match=rf"`{hook}\(server, worker\)`"):
        getattr(forksafe.gunicorn, hook)(*args, **kwargs)


def test_post_fork_with_gunicorn_arguments_in_a_process_that_did_not_fork_does_nothing() -> None:
    forksafe.gunicorn.post_fork(object(), _Worker())
    forksafe.gunicorn.post_fork(server=object(), worker=_Worker())
