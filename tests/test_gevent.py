"""Greenlets under real gunicorn ``-k gevent`` close their connections when they end (issue 21).

One gevent worker, ``CONN_MAX_AGE=60``, a burst from 20 concurrent keep-alive clients
(one greenlet each), then the clients hang up and the server is stopped with
``SIGTERM``. Without forksafe every client greenlet leaves its session open after it
ended (and PyMySQL's are dropped without a goodbye at the stop); with the
``forksafe.gunicorn`` hooks each greenlet closes its session when it ends, with and
without ``preload_app``. Asserted from the server: the sessions the burst used that
are still listed, and its count of abandoned sessions. PostgreSQL with psycopg 3 and
psycopg2 (psycogreen), MariaDB with PyMySQL; mysqlclient blocks the worker under
gevent (system check W022), so it is not a row here.
"""

from __future__ import annotations

import signal
import time

import pytest

from forksafe._sessions import list_sessions
from tests.harness.ci import skip_or_fail
from tests.harness.scripts import run_python
from tests.harness.sessions import abandoned_after, settled_abandoned, wait_sessions_gone
from uwsgi_examples.load import LoadResult, fire_keepalive
from uwsgi_examples.run import Server, migrate, missing

GEVENT_DRIVERS = ("psycopg", "pymysql", "psycopg2")
CLIENTS = 20
POOL_MAX = 8  # uwsgi_examples/exampleproject/settings.py, EXAMPLE_POOL=1
REQUESTS = 300


@pytest.fixture(scope="module")
def example_db(db_url: str, driver: str) -> str:
    if driver not in GEVENT_DRIVERS:
        pytest.skip(f"gevent server tests run for {', '.join(GEVENT_DRIVERS)} only")
    reason = missing("gunicorn")
    if reason is None:
        try:
            import gevent  # noqa: F401
        except ImportError:
            reason = "gevent is not installed (pip install 'forksafe[gevent]')"
    if reason is not None:
        skip_or_fail(reason)
    migrate(db_url)
    return db_url


def _still_open(backends: set[int], *, expected: int, timeout: float = 5.0) -> set[int]:
    """The ``backends`` the server still lists, once at most ``expected`` or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = list_sessions()
        assert sessions is not None
        left = backends & {s.id for s in sessions}
        if len(left) <= expected or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _burst(
    example_db: str, forksafe: str, preload: str, *, pool: bool = False
) -> tuple[LoadResult, set[int], int]:
    """Serve the burst; return it, the sessions left after it, and the abandoned at SIGTERM.

    ``pool``: ``EXAMPLE_POOL=1`` (``max_size`` 8): Django's native pool with psycopg 3,
    forksafe's (``forksafe.backends``) with the other drivers.
    """
    env = {
        "EXAMPLE_WORKER_CLASS": "gevent",
        "EXAMPLE_PRELOAD": preload,
        "EXAMPLE_CONN_MAX_AGE": "60",
    }
    if pool:
        env["EXAMPLE_POOL"] = "1"
    before = settled_abandoned()
    server = Server("gunicorn", example_db, forksafe=forksafe, processes=1, env=env)
    with server:
        result = fire_keepalive(server.url, requests=REQUESTS, clients=CLIENTS, timeout=10)
        assert not result.errors, result.summary() + server.log()
        used = result.backends - {r["loader_backend"] for r in result.responses}
        # The clients hung up: their greenlets have ended.
        expected = POOL_MAX if pool else 0 if forksafe != "0" else CLIENTS // 2
        left = _still_open(used, expected=expected)
        status = server.stop(signum=signal.SIGTERM, timeout=20)
        assert status == 0, server.log()
    if forksafe != "0":
        wait_sessions_gone(used)
    abandoned = abandoned_after(before, timeout=2) - before
    return result, left, abandoned


@pytest.mark.parametrize("preload", ["1", "0"], ids=["preload", "no-preload"])
def test_gevent_greenlets_close_their_sessions_when_they_end(example_db: str, preload: str) -> None:
    result, left, abandoned = _burst(example_db, "hook", preload)
    used = len(result.backends)
    # One per client greenlet (none shared: with preload_app too), none left over.
    assert CLIENTS // 2 <= used <= CLIENTS + 2, result.summary()
    assert left == set(), f"{len(left)} of {used} sessions left open after the clients ended"
    assert abandoned == 0, f"{abandoned} session(s) ended without a goodbye at SIGTERM"


def test_gevent_workers_with_a_pool_reuse_at_most_its_size_of_sessions(example_db: str) -> None:
    """Bounded reuse: 300 requests from 20 greenlets on at most ``max_size`` sessions,
    kept open by the pool on purpose after the burst and closed with a goodbye at SIGTERM."""
    result, left, abandoned = _burst(example_db, "hook", "1", pool=True)
    assert 1 <= len(result.backends) <= POOL_MAX, result.summary()
    assert len(left) <= POOL_MAX, left
    assert abandoned == 0, f"{abandoned} session(s) ended without a goodbye at SIGTERM"


def test_control_plain_django_under_gevent_leaves_a_session_per_ended_greenlet(
    example_db: str, driver: str
) -> None:
    result, left, abandoned = _burst(example_db, "0", "0")
    assert len(left) >= CLIENTS // 2, (len(left), result.summary())
    if driver == "pymysql":  # psycopg and psycopg2 say goodbye when the interpreter ends
        assert abandoned >= CLIENTS // 2, abandoned


@pytest.mark.parametrize("mode", ["forksafe", "plain"])
def test_greenlets_a_program_spawns_close_their_sessions_after_forksafe_patch_all(
    example_db: str, mode: str
) -> None:
    """``forksafe.gevent.patch_all()`` (psycogreen for psycopg2); ``plain``: the control."""
    out = run_python(
        "tests/harness/programs/greenlets.py",
        mode,
        "10",
        example_db,
        unset=("DJANGO_SETTINGS_MODULE",),
        timeout=60,
    )
    assert out["used"] == 10, out
    assert out["left"] == (0 if mode == "forksafe" else 10), out


@pytest.mark.nodb
def test_importing_forksafe_gevent_without_gevent_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['gevent'] = None\n"
        "try:\n    import forksafe.gevent\n"
        "except ImportError as exc:\n    import json; print(json.dumps(str(exc)))\n"
    )
    message = run_python("-c", code)
    assert "pip install 'forksafe[gevent]'" in message
