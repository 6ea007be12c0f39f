"""Greenlets under real gunicorn ``-k gevent`` close their connections when they end (issue 21).

One gevent worker, ``CONN_MAX_AGE=60``, a burst from 20 concurrent keep-alive clients
(one greenlet each), then the clients hang up and the server is stopped with
``SIGTERM``. Without forksafe every client greenlet leaves its session open after it
ended (and PyMySQL's are dropped without a goodbye at the stop); with the
``forksafe.gunicorn`` hooks each greenlet closes its session when it ends, with and
without ``preload_app``. Asserted from the server: the sessions the burst used that
are still listed, and its count of abandoned sessions. PostgreSQL with psycopg 3 (every
row) and psycopg2 (with psycogreen, which forksafe's gevent plugin applies: the preload
and pool rows), MariaDB with PyMySQL; mysqlclient blocks the worker under gevent
(system check W022), so it is not a row here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.ci import skip_or_fail
from tests.harness.demo import demo, table_rows
from tests.harness.scripts import run_python
from tests.harness.sessions import wait_sessions_gone
from uwsgi_examples.gevent_burst import POOL_MAX, measure
from uwsgi_examples.load import LoadResult
from uwsgi_examples.run import migrate, missing

GEVENT_DRIVERS = ("psycopg", "pymysql", "psycopg2")
CLIENTS = 20
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


def _burst(
    example_db: str, forksafe: str, preload: str, *, pool: bool = False
) -> tuple[LoadResult, set[int], int]:
    """Serve the burst; return it, the sessions left after it, and the abandoned at SIGTERM."""
    expect_left = POOL_MAX if pool else 0 if forksafe != "0" else CLIENTS // 2
    run = measure(
        example_db,
        forksafe=forksafe,
        preload=preload == "1",
        pool=pool,
        requests=REQUESTS,
        clients=CLIENTS,
        expect_left=expect_left,
    )
    assert not run.result.errors, run.result.summary() + run.log
    assert run.status == 0, run.log
    if forksafe != "0":
        wait_sessions_gone(run.used)  # all closed by the stop
    return run.result, run.left, run.abandoned


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
    if driver == "psycopg2":
        pytest.skip("psycopg 3 shows the leak on PostgreSQL (CI time)")
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


def test_demo_gevent_rows_show_plain_greenlets_leaving_sessions_and_forksafe_ok(
    example_db: str, driver: str, tmp_path: Path
) -> None:
    if driver != "pymysql":
        pytest.skip("runs once, for PyMySQL (its plain row also abandons sessions at SIGTERM)")
    proc = demo("--database", example_db, "--only", "gevent", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r[0]: r for r in table_rows(proc.stdout, 6) if r[0] in ("plain", "forksafe")}
    forksafe = rows["forksafe"]
    assert forksafe[1] == "0" and forksafe[3:] == ["0", "0", "ok"], proc.stdout
    assert rows["plain"][-1] == "BROKEN" and int(rows["plain"][3]) > 0, proc.stdout
