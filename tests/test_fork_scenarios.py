"""Each exit path of a forked child, in a fresh interpreter, plain Django vs forksafe.

These run ``python -m forksafe.demo._scenarios`` (the code behind ``forksafe demo``)
so that the child exits exactly as real programs do: interpreter finalization,
uncaught exceptions, SIGKILL.
"""

from __future__ import annotations

from typing import Any

import pytest

from forksafe.demo import _scenarios


def _check_forksafe(res: dict[str, Any], vendor: str) -> None:
    assert res["parent_error"] is None, res["stderr"]
    assert res["parent_same_session"] is True
    assert res["child_error"] is None, res
    if vendor != "sqlite":
        assert res["sessions_left"] == 0, res


@pytest.mark.parametrize("exit_path", _scenarios.EXIT_PATHS)
def test_child_exit_keeps_parent_session(db_url: str, vendor: str, exit_path: str) -> None:
    res = _scenarios.run("fork", db_url, exit_path=exit_path)
    _check_forksafe(res, vendor)
    if exit_path in ("orm", "sys_exit", "exception"):
        assert res["child_own_session"] is True


@pytest.mark.parametrize("exit_path", ["sys_exit", "close_all", "sigkill"])
def test_other_thread_keeps_its_session_across_fork(
    db_url: str, vendor: str, exit_path: str
) -> None:
    res = _scenarios.run("fork_thread", db_url, exit_path=exit_path)
    _check_forksafe(res, vendor)
    assert res["thread_same_session"] is True, res.get("extra")


@pytest.mark.parametrize("scenario", ["fork", "fork_thread"])
def test_manual_after_fork_in_child_without_install_keeps_parent_session(
    db_url: str, vendor: str, scenario: str
) -> None:
    """No at-fork hook (uWSGI): the child calls after_fork_in_child() itself, which finds
    the inherited connections of every thread by itself."""
    res = _scenarios.run(scenario, db_url, exit_path="close_all", mode="manual")
    _check_forksafe(res, vendor)
    res = _scenarios.run(scenario, db_url, exit_path="orm", mode="manual")
    _check_forksafe(res, vendor)
    assert res["child_own_session"] is True


def test_close_before_fork_gives_parent_a_clean_reconnect(db_url: str, vendor: str) -> None:
    res = _scenarios.run("fork", db_url, exit_path="close_all", close_before_fork=True)
    assert res["parent_error"] is None, res["stderr"]
    if vendor != "sqlite":
        # The parent closed its own session before forking and opened a new one.
        assert res["parent_same_session"] is False
        assert res["sessions_left"] == 0


def test_control_plain_django_child_close_all_kills_parent_session(
    db_url: str, vendor: str
) -> None:
    """Without forksafe the bug is real: the child's goodbye ends the parent's session."""
    if vendor == "sqlite":
        pytest.skip("SQLite has no server session to kill")
    res = _scenarios.run("fork", db_url, exit_path="close_all", mode="plain")
    assert res["parent_same_session"] is False
    assert res["parent_error"] is not None


def test_control_plain_django_child_shares_parent_session(db_url: str, vendor: str) -> None:
    res = _scenarios.run("fork", db_url, exit_path="os_exit", mode="plain")
    if vendor == "sqlite":
        pytest.skip("SQLite has no server session to share")
    # os._exit sends nothing, but a querying child uses the parent's session:
    res = _scenarios.run("fork", db_url, exit_path="orm", mode="plain")
    if res["parent_error"] is None:
        assert res["child_own_session"] is False
    else:  # mysqlclient: the child's exit also said goodbye
        assert res["driver"] == "mysqlclient"


def test_native_pool_child_gets_own_connection(db_url: str, driver: str) -> None:
    if driver != "psycopg":
        pytest.skip("Django's native pool needs PostgreSQL with psycopg 3")
    res = _scenarios.run("fork_pool", db_url, exit_path="orm")
    assert res["parent_error"] is None, res["stderr"]
    assert res["parent_same_session"] is True
    assert res["child_own_session"] is True
    assert res["pool_lost"] == 0


def test_native_pool_child_close_pool_keeps_parent_pool(db_url: str, driver: str) -> None:
    if driver != "psycopg":
        pytest.skip("Django's native pool needs PostgreSQL with psycopg 3")
    res = _scenarios.run("fork_pool", db_url, exit_path="close_pool")
    assert res["parent_error"] is None, res["stderr"]
    assert res["pool_lost"] == 0
    plain = _scenarios.run("fork_pool", db_url, exit_path="close_pool", mode="plain")
    assert plain["pool_lost"] > 0, "control: plain Django's close_pool() kills the parent's pool"
