"""forksafe under real gunicorn servers on 127.0.0.1 (``uwsgi_examples/gunicorn.conf.py``).

``preload_app = True``: the example application queries the database while it
loads in the arbiter, then gunicorn forks its workers with ``os.fork()``. The
server tests run for the psycopg and mysqlclient drivers only (see
``test_uwsgi.py``); the hooks' argument checks run for every driver.
"""

from __future__ import annotations

import signal

import pytest
from django.db import connection

import forksafe.gunicorn
from forksafe._sessions import backend_id, settle_sessions
from tests.harness.prefork import (
    WORKERS,
    assert_own_sessions,
    backends_of,
    require_server,
    wait_for_new_workers,
)
from tests.harness.sessions import assert_none_abandoned, wait_sessions_gone
from uwsgi_examples.load import fire
from uwsgi_examples.run import Server


@pytest.fixture(scope="module")
def example_db(db_url: str, driver: str) -> str:
    return require_server("gunicorn", db_url, driver)


@pytest.mark.parametrize("forksafe_mode", ["1", "hook"])
def test_preloaded_sync_workers_each_get_their_own_session(
    example_db: str, baseline: int, abandoned: int, forksafe_mode: str
) -> None:
    """``1``: forksafe.install() in wsgi.py plus the conf hooks (no double work);
    ``hook``: the gunicorn.conf.py hooks alone. At stop every session says goodbye."""
    with Server("gunicorn", example_db, forksafe=forksafe_mode, processes=WORKERS) as server:
        result = fire(server.url, requests=1000, concurrency=32, timeout=10)
        assert_own_sessions(result, workers=WORKERS)
        assert all(len(b) == 1 for b in result.backends_by_pid.values())
        # The arbiter closed its session before forking: only the workers' remain.
        expected = baseline + WORKERS
        assert settle_sessions(expected) == expected, server.log()
    wait_sessions_gone(result.backends)
    assert_none_abandoned(abandoned)


def test_gthread_workers_each_get_their_own_sessions(example_db: str) -> None:
    env = {"EXAMPLE_WORKER_CLASS": "gthread", "EXAMPLE_THREADS": "4"}
    with Server("gunicorn", example_db, processes=2, env=env) as server:
        result = fire(server.url, requests=400, concurrency=16, timeout=10)
    assert_own_sessions(result, workers=2)
    assert all(len(b) <= 4 for b in result.backends_by_pid.values()), result.backends_by_pid


@pytest.mark.parametrize("pool", ["1", "dbcp"], ids=["native-or-forksafe", "dbcp"])
def test_preloaded_gthread_workers_build_pools_of_their_own_within_max_size(
    example_db: str, abandoned: int, pool: str
) -> None:
    """The arbiter queried through its pool while loading; each worker leaves that pool alone
    and builds its own (Django's native pool with psycopg 3, forksafe's otherwise, or
    django-db-connection-pool's), at most 8 sessions; at ``SIGTERM`` every session says
    goodbye, the arbiter's pool included."""
    env = {"EXAMPLE_WORKER_CLASS": "gthread", "EXAMPLE_THREADS": "4", "EXAMPLE_POOL": pool}
    with Server("gunicorn", example_db, processes=2, env=env) as server:
        result = fire(server.url, requests=400, concurrency=16, timeout=10)
        assert server.stop(signum=signal.SIGTERM) == 0, server.log()
    assert_own_sessions(result, workers=2)
    assert all(len(b) <= 8 for b in result.backends_by_pid.values()), result.backends_by_pid
    wait_sessions_gone(result.backends)
    assert_none_abandoned(abandoned)


def test_max_requests_recycled_workers_close_their_sessions_cleanly(
    example_db: str, abandoned: int
) -> None:
    env = {"EXAMPLE_MAX_REQUESTS": "100"}
    with Server("gunicorn", example_db, processes=WORKERS, env=env) as server:
        result = fire(server.url, requests=600, concurrency=16, timeout=10)
        assert_own_sessions(result)
        recycled = result.pids - set(server.children())
        assert recycled, "no worker was recycled"
        wait_sessions_gone(backends_of(result, recycled))
        assert_none_abandoned(abandoned)


def test_graceful_reload_closes_the_old_workers_sessions_cleanly(
    example_db: str, abandoned: int
) -> None:
    with Server("gunicorn", example_db, processes=WORKERS) as server:
        before = fire(server.url, requests=200, concurrency=16)
        # Not workers=WORKERS: a fast burst may finish before the last worker has booted.
        assert_own_sessions(before)
        server.signal(signal.SIGHUP)
        wait_for_new_workers(server, before.pids)
        after = fire(server.url, requests=400, concurrency=16)
        assert_own_sessions(after)
        assert not after.pids & before.pids
        wait_sessions_gone(backends_of(before, before.pids))
        assert_none_abandoned(abandoned)


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_install_in_wsgi_py_alone_gives_preloaded_workers_their_own_sessions(
    example_db: str, abandoned: int, worker_class: str
) -> None:
    """What the README promises: ``forksafe.install()`` in wsgi.py is enough for gunicorn
    (``EXAMPLE_FORKSAFE=wsgi``: no pre_fork/post_fork hooks in gunicorn.conf.py)."""
    env = {"EXAMPLE_WORKER_CLASS": worker_class}
    with Server("gunicorn", example_db, forksafe="wsgi", processes=2, env=env) as server:
        result = fire(server.url, requests=200, concurrency=8, timeout=10)
    assert_own_sessions(result, workers=2)
    wait_sessions_gone(result.backends)
    assert_none_abandoned(abandoned)  # the workers' exit said goodbye for every session


def test_control_plain_django_workers_share_the_arbiter_session(
    example_db: str, baseline: int
) -> None:
    """Without forksafe the problem is real: preloaded sync workers use the arbiter's session.

    (gthread workers run requests in threads of their own, which open their own sessions:
    there plain Django shares the arbiter's session in the workers' main thread only.)
    """
    with Server("gunicorn", example_db, forksafe="0", processes=2) as server:
        result = fire(server.url, requests=100, concurrency=8, timeout=3)
    assert result.on_loader_session > 0 or result.errors, result.summary()


@pytest.mark.parametrize("hook", ["pre_fork", "post_fork"])
def test_gunicorn_accepts_the_hooks_in_its_configuration(hook: str) -> None:
    from gunicorn.config import Config

    config = Config()
    config.set(hook, getattr(forksafe.gunicorn, hook))  # gunicorn checks the arity (2)
    assert getattr(config, hook) is getattr(forksafe.gunicorn, hook)


def test_post_fork_with_gunicorn_arguments_in_a_process_that_did_not_fork_does_nothing() -> None:
    """This process's connection and its session survive (a reset would drop them)."""
    mine = backend_id()
    forksafe.gunicorn.post_fork(object(), object())
    forksafe.gunicorn.post_fork(server=object(), worker=object())
    assert connection.connection is not None
    assert backend_id() == mine
