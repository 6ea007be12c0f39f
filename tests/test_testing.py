"""Leak assertions: a leaking block fails with a message naming alias and thread or pid."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from django.db import connections

import forksafe
from forksafe import _sessions
from forksafe.testing import ConnectionLeak, assert_no_connection_leaks

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("db")


def _query_in_thread(close: bool) -> threading.Thread:
    def work() -> None:
        _sessions.backend_id()
        if close:
            connections.close_all()

    thread = threading.Thread(target=work, name="leaky-worker")
    thread.start()
    thread.join()
    return thread


def test_thread_that_closes_its_connection_passes() -> None:
    with assert_no_connection_leaks():
        _query_in_thread(close=True)


def test_thread_that_leaves_its_connection_open_fails_naming_alias_and_thread() -> None:
    leak = pytest.raises(ConnectionLeak, match=r"alias 'default'.*thread ident \d+")
    with leak as info, assert_no_connection_leaks():
        thread = _query_in_thread(close=False)
    assert str(thread.ident) in str(info.value)


def test_callers_own_connection_is_not_a_leak() -> None:
    with assert_no_connection_leaks():
        _sessions.backend_id()


def test_child_process_holding_a_session_fails_naming_its_pid(vendor: str) -> None:
    if vendor == "sqlite":
        pytest.skip("SQLite has no server sessions")
    ready_r, ready_w = os.pipe()  # child -> parent: "I hold a session"
    pid = -1
    try:
        with pytest.raises(ConnectionLeak) as info, assert_no_connection_leaks(timeout=0.5):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child: open a session, then wait
                try:
                    _sessions.backend_id()
                    os.write(ready_w, b"1")
                    signal.pause()  # until the parent kills it
                finally:
                    os._exit(0)
            assert os.read(ready_r, 1) == b"1"
        assert f"pid {pid}" in str(info.value)
    finally:
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)


def test_unknown_alias_is_rejected_with_the_configured_ones() -> None:
    bad_alias = pytest.raises(ValueError, match="unknown database alias.*'nope'.*configured")
    with bad_alias, assert_no_connection_leaks(["nope"]):
        pass


def test_stats_count_opened_closed_and_detached() -> None:
    before = forksafe.stats().get("other", {"opened": 0, "closed": 0})
    _sessions.backend_id("other")
    connections["other"].close()
    after = forksafe.stats()["other"]
    assert after["opened"] == before["opened"] + 1
    assert after["closed"] == before["closed"] + 1

    _sessions.backend_id("other")
    forksafe.install(close_before_fork=False)
    try:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            stats = forksafe.stats().get("other", {})
            os.write(write_fd, f"{stats.get('detached')},{stats.get('opened')}".encode())
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read_fd, 100) == b"1,0"
        os.close(read_fd)
        os.close(write_fd)
    finally:
        forksafe.install(close_before_fork=True)
        connections["other"].close()


def test_pytest_fixture_fails_a_leaking_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading
        import pytest
        from django.db import connections

        from forksafe import _sessions

        @pytest.mark.usefixtures("forksafe_no_leaks")
        def test_leaks():
            t = threading.Thread(target=_sessions.backend_id, name="leaker")
            t.start()
            t.join()

        @pytest.mark.usefixtures("forksafe_no_leaks")
        def test_clean():
            def work():
                _sessions.backend_id()
                connections.close_all()
            t = threading.Thread(target=work)
            t.start()
            t.join()
        """
    )
    pytester.makeconftest(
        """
        import django
        def pytest_configure(config):
            django.setup()
        """
    )
    result = pytester.runpytest_subprocess()  # the plugin loads through its entry point
    # The leak is found when the fixture tears down: pytest reports the leaking test's call
    # as passed and its teardown as an error, which fails the run.
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*ConnectionLeak: connection leak: alias 'default'*thread*"])
