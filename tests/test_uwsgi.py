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
from pathlib import Path
from typing import Any

import pytest

from forksafe import uwsgi as forksafe_uwsgi
from forksafe._sessions import list_sessions, settle_sessions
from tests.harness.prefork import (
    WORKERS,
    assert_own_sessions,
    backends_of,
    require_server,
    wait_for_new_workers,
)
from tests.harness.sessions import assert_none_abandoned, settled_abandoned, wait_sessions_gone
from uwsgi_examples.load import fire, get
from uwsgi_examples.run import Server


@pytest.fixture(scope="module")
def example_db(db_url: str, driver: str) -> str:
    return require_server("uwsgi", db_url, driver)


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


def test_max_requests_recycled_workers_close_their_sessions_cleanly(
    example_db: str, abandoned: int
) -> None:
    # uWSGI recycles no worker younger than min-worker-lifetime (10 s by default).
    extra = ("--max-requests", "100", "--min-worker-lifetime", "0")
    with Server("preforked", example_db, processes=WORKERS, extra=extra) as server:
        result = fire(server.url, requests=600, concurrency=16, timeout=10)
        assert_own_sessions(result)
        recycled = result.pids - set(server.children())
        assert recycled, "no worker was recycled"
        wait_sessions_gone(backends_of(result, recycled))
        assert_none_abandoned(abandoned)  # while the master (and its session) still runs


def test_graceful_reload_leaves_no_extra_sessions(
    example_db: str, baseline: int, abandoned: int
) -> None:
    """The old workers' sessions end and the new ones replace them. One session is lost
    without a goodbye: the master's own, opened while loading -- a graceful reload
    ``exec()``s the master, and its descriptors close with the old program image."""
    with Server("preforked", example_db, processes=WORKERS) as server:
        before = fire(server.url, requests=200, concurrency=16)
        assert_own_sessions(before, workers=WORKERS)
        server.signal(signal.SIGHUP)
        wait_for_new_workers(server, before.pids)
        after = fire(server.url, requests=400, concurrency=16)
        assert_own_sessions(after, workers=WORKERS)
        assert not after.pids & before.pids
        old_master = {r["loader_backend"] for r in before.responses}
        assert not old_master & {r["loader_backend"] for r in after.responses}
        wait_sessions_gone(backends_of(before, before.pids) | old_master)
        expected = baseline + WORKERS + 1
        assert settle_sessions(expected, timeout=10) == expected, server.log()
        assert settled_abandoned() == abandoned + 1


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


@pytest.mark.parametrize("forksafe_mode", ["1", "0"])
def test_lazy_apps_workers_keep_the_session_they_opened_while_loading(
    example_db: str, forksafe_mode: str
) -> None:
    """lazy-apps needs no forksafe (``0``: plain Django is clean too), and forksafe changes
    nothing there: each worker loads the application after the fork and answers every
    request on the session it opened while loading -- no reset, no second session."""
    with Server("lazy-apps", example_db, forksafe=forksafe_mode, processes=2) as server:
        result = fire(server.url, requests=200, concurrency=8)
    assert not result.errors, result.summary()
    assert result.responses, result.summary()
    # (One worker may still be loading when the first answers: no count of workers here.)
    for r in result.responses:
        assert r["loader_pid"] == r["pid"], r  # each worker loaded the application itself
        assert r["backend"] == r["loader_backend"], r
    assert result.shared_backends == {}


def test_threaded_workers_give_each_request_thread_its_own_session(
    example_db: str, baseline: int, abandoned: int
) -> None:
    with Server("threads", example_db, processes=2) as server:
        result = fire(server.url, requests=400, concurrency=16)
        # While it runs: the request threads' sessions and the master's, nothing more.
        loader = {r["loader_backend"] for r in result.responses}
        assert len(loader) == 1 and not loader & result.backends
        live = {s.id for s in list_sessions() or []}
        assert result.backends | loader <= live, (result.backends, live)
        expected = baseline + len(result.backends) + 1
        assert settle_sessions(expected) == expected, (live, result.backends)
    assert_own_sessions(result, workers=2)
    assert all(len(b) <= 4 for b in result.backends_by_pid.values()), result.backends_by_pid
    wait_sessions_gone(result.backends | loader)
    # At stop every request thread said goodbye; only the master's own session (opened
    # while loading, kept by CONN_MAX_AGE) is lost: uWSGI's master exits in C.
    assert settled_abandoned() == abandoned + 1


@pytest.mark.parametrize("pool", ["1", "dbcp"], ids=["native-or-forksafe", "dbcp"])
def test_threaded_workers_build_pools_of_their_own_within_max_size(
    example_db: str, baseline: int, abandoned: int, pool: str, driver: str
) -> None:
    """The master queried through its pool while loading; each worker leaves that pool alone
    and builds its own (Django's native pool with psycopg 3, forksafe's otherwise, or
    django-db-connection-pool's), at most 8 sessions, each closed with a goodbye at stop."""
    if pool == "1" and driver == "psycopg":
        pytest.skip(
            "Django's native pool runs threads in uWSGI's master, which forks in C without"
            " reinitialising the GIL: workers can hang (docs/guides/uwsgi.md)"
        )
    with Server("threads", example_db, processes=2, env={"EXAMPLE_POOL": pool}) as server:
        result = fire(server.url, requests=400, concurrency=16)
        # The workers' pools keep what they opened (max_idle 600 s): the rest is the master's.
        live = len(list_sessions() or [])
        master = live - baseline - len(result.backends)
    assert_own_sessions(result, workers=2)
    assert all(len(b) <= 8 for b in result.backends_by_pid.values()), result.backends_by_pid
    assert 1 <= master <= 8, (live, baseline, result.backends)
    wait_sessions_gone(result.backends)
    # Only what the master's pool held is lost at stop: uWSGI's master exits in C (see
    # test_threaded_workers_give_each_request_thread_its_own_session).
    assert settled_abandoned() - abandoned == master


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


def test_without_master_each_worker_gets_its_own_session_on_first_use(
    example_db: str, baseline: int
) -> None:
    """No hook runs in the workers: the pid check before each use detaches and reconnects.

    Without ``master`` the process that loaded the application becomes worker 1 (its
    session is its own) and forks the others in C.
    """
    with Server("no-master", example_db, processes=WORKERS) as server:
        result = fire(server.url, requests=1000, concurrency=32, timeout=10)
        log = server.log()
        assert_own_sessions(result, workers=WORKERS)
        assert all(len(b) == 1 for b in result.backends_by_pid.values()), result.backends_by_pid
        assert settle_sessions(baseline + WORKERS) == baseline + WORKERS
    # One WARNING per forked worker, saying what master adds.
    assert log.count("was forked without forksafe's reset") == WORKERS - 1, log
    assert "master = true" in log


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


def test_without_enable_threads_uwsgi_still_runs_threads_between_requests_and_no_w003(
    example_db: str,
) -> None:
    """uWSGI 2.0.27+ enables Python threads whatever the configuration says (``preforked.ini``
    has no ``enable-threads``): a background thread ticks between requests, so forksafe must
    not log W003 for ``FORKSAFE["THREADS"]``. Under an older uWSGI the thread would stand
    still between requests and W003 would be due (see test_checks.py)."""
    env = {"EXAMPLE_FORKSAFE_APP": "1"}  # "forksafe" app, THREADS=True: ready() logs checks
    with Server("preforked", example_db, processes=1, env=env) as server:
        first = get(server.url + "ticks")  # starts the ticker: every 10 ms
        time.sleep(1.0)
        second = get(server.url + "ticks")  # read first thing in the request
        log = server.log()
    assert second["pid"] == first["pid"]
    assert second["ticks"] - first["ticks"] >= 20, (first, second)
    assert "python threads support enabled" in log, log
    assert "forksafe.W003" not in log, log


@pytest.mark.parametrize("forksafe_mode", ["1", "0"])
def test_harakiri_respawned_worker_gets_its_own_session(
    example_db: str, forksafe_mode: str
) -> None:
    """A worker stuck in a query is killed by ``harakiri`` and the master forks a new one:
    with forksafe the new worker queries on a session of its own; plain Django (the control)
    puts it on the master's session (or it fails: that session is still busy)."""
    extra = ("--harakiri", "2")
    with Server(
        "preforked", example_db, forksafe=forksafe_mode, processes=1, extra=extra
    ) as server:
        (old_pid,) = server.children()
        with pytest.raises((OSError, RuntimeError)):  # the worker dies mid-request
            get(server.url + "sleep?seconds=8", timeout=20)
        deadline = time.monotonic() + 30
        while set(server.children()) <= {old_pid}:  # the master respawns the worker
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        result = fire(server.url, requests=8, concurrency=2, timeout=3)
        log = server.log()
    assert "HARAKIRI" in log, log
    assert old_pid not in result.pids, result.summary()
    if forksafe_mode == "0":
        assert result.on_loader_session > 0 or result.errors, result.summary()
        return
    assert_own_sessions(result, workers=1)
