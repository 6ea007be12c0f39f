"""Third-party pools across ``os.fork()``: django-db-connection-pool (SQLAlchemy's QueuePool).

Its pools hold idle connections that no Django wrapper holds, in a module-level dict
(``dj_db_conn_pool.core.pool_container``). A forked child inherits them; without forksafe the
child's next checkout hands it the parent's session. Judged by the server: session ids and
its count of sessions that ended without a goodbye.
"""

from __future__ import annotations

import pytest

from tests.harness.ci import skip_or_fail
from tests.harness.scripts import run_python
from tests.harness.sessions import settled_abandoned, wait_sessions_gone


@pytest.fixture
def dbcp_url(db_url: str, driver: str) -> str:
    """The run's server URL, for the drivers django-db-connection-pool's dialects speak."""
    if driver not in ("psycopg2", "mysqlclient"):
        pytest.skip(
            "django-db-connection-pool runs once per server: psycopg2 (PostgreSQL) and"
            " mysqlclient (MariaDB); the detach per driver is tested elsewhere"
        )
    try:
        import dj_db_conn_pool  # noqa: F401
    except ImportError:
        skip_or_fail("django-db-connection-pool is not installed (the test extra has it)")
    return db_url


def _run(mode: str, url: str, hold: str = "idle") -> dict[str, object]:
    result: dict[str, object] = run_python(
        "-m", "tests.harness.programs.third_party_pool", mode, url, hold
    )
    return result


@pytest.mark.parametrize("hold", ["idle", "held"])
def test_a_child_never_gets_the_parents_session_from_django_db_connection_pool(
    dbcp_url: str, hold: str
) -> None:
    """``idle``: the parent's session waits in the pool; ``held``: Django's wrapper holds it."""
    before = settled_abandoned()
    res = _run("forksafe", dbcp_url, hold)
    assert res["child_exit"] == 0, res
    child = res["child"]
    assert isinstance(child, dict) and "error" not in child, res
    assert child["session"] != res["parent"], res  # a session of its own
    assert res.get("parent_error") is None, res
    assert res["parent_after"] == res["parent"], res  # the parent's pooled session survived
    wait_sessions_gone({int(child["session"]), int(res["parent"])})  # type: ignore[call-overload]
    assert settled_abandoned() == before  # the child said goodbye on its own session only


@pytest.mark.parametrize("hold", ["idle", "held"])
def test_without_forksafe_the_child_gets_the_parents_session(dbcp_url: str, hold: str) -> None:
    """The control: the inherited pool (or wrapper) hands the parent's socket to the child."""
    res = _run("plain", dbcp_url, hold)
    child = res["child"]
    assert isinstance(child, dict), res
    assert child.get("session") == res["parent"] or "error" in child, res
