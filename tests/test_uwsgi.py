"""forksafe under real uWSGI servers on 127.0.0.1, serving the project in ``uwsgi_examples/``.

The example application queries the database while it loads in the master,
then uWSGI forks (in C) its workers, mules, spoolers and respawns. The server tests run
for the psycopg and mysqlclient drivers only: they exercise uWSGI's hooks, and
the per-driver detach code is covered for every driver by the fork tests. The
example's ``CONN_MAX_AGE`` is 600, so each worker keeps one session.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forksafe import uwsgi as forksafe_uwsgi
from forksafe._sessions import settle_sessions
from tests._prefork import (
    WORKERS,
    assert_own_sessions,
    require_server,
    session_baseline,
    wait_for_new_workers,
)
from uwsgi_examples.load import fire, get
from uwsgi_examples.run import Server


@pytest.fixture(scope="module")
def example_db(db_url: str, driver: str) -> str:
    return require_server("uwsgi", db_url, driver)


@pytest.fixture
def baseline(example_db: str) -> Iterator[int]:
    yield from session_baseline(example_db)


def test_workers_each_get_their_own_session_under_a_thousand_concurrent_requests(
    example_db: str, baseline: int
) -> None:
    with Server("preforked", example_db, processes=WORKERS) as server:
        result = fire(server.url, requests=1000, concurrency=32, timeout=10)
        assert_own_sessions(result, workers=WORKERS)
        assert all(len(b) == 1 for b in result.backends_by_pid.values()), result.backends_by_pid
        # The workers' sessions, plus the one the master opened while loading.
        assert settle_sessions(baseline + WORKERS + 1) == baseline + WORKERS + 1


def test_freeze_gc_workers_start_frozen_and_each_get_their_own_session(example_db: str) -> None:
    """``install(freeze_gc=True)``: uWSGI's master forks in C, so each worker freezes first."""
    with Server("preforked", example_db, forksafe="freeze", processes=WORKERS) as server:
        result = fire(server.url, requests=200, concurrency=16, timeout=10)
    assert_own_sessions(result, workers=WORKERS)
    assert all(r["frozen"] > 0 for r in result.responses), {r["frozen"] for r in result.responses}


def test_control_plain_django_workers_share_the_master_session(
    example_db: str, baseline: int
) -> None:
    """Without forksafe the problem is real: workers query on the master's session."""
    with Server("preforked", example_db, forksafe="0", processes=WORKERS) as server:
        result = fire(server.url, requests=200, concurrency=16, timeout=3)
    assert result.on_loader_session > 0 or result.errors, result.summary()


def test_max_requests_recycling_does_not_pile_up_sessions(example_db: str, baseline: int) -> None:
    # uWSGI recycles no worker younger than min-worker-lifetime (10 s by default).
    extra = ("--max-requests", "100", "--min-worker-lifetime", "0")
    with Server("preforked", example_db, processes=WORKERS, extra=extra) as server:
        result = fire(server.url, requests=600, concurrency=16, timeout=10)
        assert_own_sessions(result)
        assert len(result.pids) > WORKERS, "no worker was recycled"
        # A respawned worker that got no request yet has no session: at most this many.
        expected = baseline + WORKERS + 1
        n = settle_sessions(expected, timeout=5)
        assert n is not None and n <= expected


def test_graceful_reload_leaves_no_extra_sessions(example_db: str, baseline: int) -> None:
    with Server("preforked", example_db, processes=WORKERS) as server:
        before = fire(server.url, requests=200, concurrency=16)
        assert_own_sessions(before, workers=WORKERS)
        server.signal(signal.SIGHUP)
        wait_for_new_workers(server, before.pids)
        after = fire(server.url, requests=400, concurrency=16)
        assert_own_sessions(after, workers=WORKERS)
        assert not after.pids & before.pids
        expected = baseline + WORKERS + 1
        assert settle_sessions(expected, timeout=10) == expected, server.log()


def _wait_for_report(path: Path, server: Server) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_mule_and_spooler_run_orm_queries_on_their_own_sessions(
    example_db: str, tmp_path: Path
) -> None:
    mule_report, spool_report = tmp_path / "mule.json", tmp_path / "spool.json"
    (tmp_path / "spool").mkdir()
    env = {
        "EXAMPLE_MULE_REPORT": str(mule_report),
        "EXAMPLE_SPOOL_REPORT": str(spool_report),
        "EXAMPLE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    with Server("mules", example_db, processes=2, env=env) as server:
        reports = {"mule": _wait_for_report(mule_report, server)}
        assert get(server.url + "spool")["queued"] is True
        reports["spooler"] = _wait_for_report(spool_report, server)
        workers = fire(server.url, requests=50, concurrency=4)
    assert_own_sessions(workers)
    for name, report in reports.items():
        assert "error" not in report, (name, report)
        assert len(set(report["backends"])) == 1, (name, report)
        assert report["backends"][0] != report["loader_backend"], (name, report)
        assert report["pid"] not in workers.pids, (name, report)
    assert reports["mule"]["pid"] != reports["spooler"]["pid"]
    assert reports["mule"]["backends"][0] != reports["spooler"]["backends"][0]


@pytest.mark.parametrize("user_hook", ["decorator-before", "decorator-after", "raw-before"])
def test_user_post_fork_hooks_are_kept_and_run_after_the_reset(
    example_db: str, user_hook: str
) -> None:
    """Whether the application registers its hook before or after forksafe, both run,
    ours first: the user's hook queries on the worker's own session."""
    env = {"EXAMPLE_USER_HOOK": user_hook}
    with Server("preforked", example_db, processes=2, env=env) as server:
        result = fire(server.url, requests=40, concurrency=4)
    assert_own_sessions(result, workers=2)
    for r in result.responses:
        assert r["postfork_pid"] == r["pid"], r
        assert r["postfork_backend"] == r["backend"], r


def test_lazy_apps_still_work_with_forksafe_installed(example_db: str) -> None:
    with Server("lazy-apps", example_db, processes=2) as server:
        result = fire(server.url, requests=200, concurrency=8)
    assert not result.errors, result.summary()
    # Each worker loaded the application itself: its loader session is its own.
    assert all(r["loader_pid"] == r["pid"] for r in result.responses)
    assert result.shared_backends == {}


def test_threaded_workers_give_each_request_thread_its_own_session(
    example_db: str, baseline: int
) -> None:
    with Server("threads", example_db, processes=2) as server:
        result = fire(server.url, requests=400, concurrency=16)
    assert_own_sessions(result, workers=2)
    assert all(len(b) <= 4 for b in result.backends_by_pid.values()), result.backends_by_pid
    # Every session ended with the server: none left behind by a request thread.
    assert settle_sessions(baseline) == baseline


@pytest.mark.skipif(
    sys.version_info >= (3, 13),
    reason="uWSGI 2.0's py-call-osafterfork aborts workers on Python 3.13 with or without"
    " forksafe (Fatal Python error: _PyRecursiveMutex_Unlock), a known uWSGI problem",
)
def test_py_call_osafterfork_and_the_post_fork_hook_together_work(example_db: str) -> None:
    """Both hooks run in each worker; the second finds nothing left to do."""
    with Server("preforked", example_db, processes=2, extra=("--py-call-osafterfork",)) as server:
        result = fire(server.url, requests=200, concurrency=8)
    assert_own_sessions(result, workers=2)


def test_without_master_forksafe_says_how_to_fix_it(example_db: str) -> None:
    with Server("no-master", example_db, processes=2) as server:
        get(server.url)
        log = server.log()
    assert "uWSGI runs without its master process" in log, log
    assert "Enable `master = true`" in log
    assert "forksafe.after_fork_in_child()" in log


def test_outside_uwsgi_install_does_nothing_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not forksafe_uwsgi.running_under_uwsgi()
    with caplog.at_level(logging.INFO, logger="forksafe"):
        assert forksafe_uwsgi.install() is False
    assert "not running under uWSGI" in caplog.text
