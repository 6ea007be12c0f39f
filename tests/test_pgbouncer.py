"""forksafe behind a real PgBouncer (transaction and session pooling) on a loopback port.

Each test module run starts its own PgBouncer per pool mode (``tests/_pgbouncer.py``)
in front of the run's PostgreSQL database, for psycopg 3 and psycopg2 only. The
scenarios run in fresh interpreters (``tests/_pooler_scenarios.py``): a client
connection to the pooler is identified by its local TCP port, which process holds
it by /proc, and a client that left without a goodbye by PgBouncer's own log
("client unexpected eof").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._pgbouncer import PgBouncer, require_pgbouncer, tcp_ports_of

ROOT = Path(__file__).resolve().parent.parent
MODES = ("transaction", "session")


@pytest.fixture(scope="module", params=MODES)
def pooler(request: pytest.FixtureRequest, db_url: str, driver: str) -> Iterator[PgBouncer]:
    exe = require_pgbouncer(driver)
    with PgBouncer(exe, db_url, mode=request.param) as bouncer:
        yield bouncer


def _scenario(name: str, pooler: PgBouncer, mode: str) -> dict[str, Any]:
    """Run ``tests._pooler_scenarios`` ``name`` through ``pooler``; its JSON result."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests._pooler_scenarios", name, "--database", pooler.url]
        + ["--mode", mode],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("mode", ["forksafe", "detach"])
def test_forked_children_never_share_the_parents_pooler_connection(
    pooler: PgBouncer, mode: str
) -> None:
    eofs = pooler.unexpected_eofs()
    res = _scenario("fork", pooler, mode)
    assert res["child_errors"] == [], res
    assert res["shared"] == 0, res
    assert res["parent_errors"] == 0, res
    if mode == "detach":  # the parent kept its one client connection across 50 children
        assert res["parent_ports"] == 1, res
    assert pooler.unexpected_eofs() == eofs, pooler.log()[-3000:]


def test_control_plain_django_children_end_the_parents_pooler_connection(
    pooler: PgBouncer,
) -> None:
    """Without forksafe a child's close_all() says goodbye on the parent's client connection.

    The parent's next query fails and it reconnects; the next child then has no
    connection to inherit: every second fork breaks the parent (25 of 50).
    """
    res = _scenario("fork", pooler, "plain")
    assert res["shared"] >= res["forks"] // 4, res
    assert res["parent_errors"] == res["shared"], res


@pytest.mark.parametrize("mode", ["forksafe", "detach"])
def test_pool_workers_each_open_their_own_pooler_connection(pooler: PgBouncer, mode: str) -> None:
    res = _scenario("pool", pooler, mode)
    assert "child_errors" not in res and "parent_error" not in res, res
    ports = [p for worker in res["worker_ports"].values() for p in worker]
    assert ports and len(ports) == len(set(ports)) == len(res["worker_ports"]), res
    assert res["parent_port"] not in ports, res
    assert res["parent_same_port"] is (mode == "detach"), res


def test_threads_close_their_pooler_connections_when_they_end(pooler: PgBouncer) -> None:
    res = _scenario("threads", pooler, "forksafe")
    assert res["child_errors"] == [] and res["thread_ports"] == 10, res
    assert res["open_after"] == 1, res  # the main thread's own
    plain = _scenario("threads", pooler, "plain")
    assert plain["open_after"] > 1, ("control: ended plain threads keep theirs until the GC", plain)


def _gunicorn(db_url: str) -> None:
    """Skip (or with CI set, fail) without gunicorn; migrate the example project's tables."""
    from uwsgi_examples.run import migrate, missing

    reason = missing("gunicorn")
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}")
        pytest.skip(reason)
    migrate(db_url)


def test_preforked_gunicorn_workers_each_hold_their_own_pooler_connection(
    pooler: PgBouncer, db_url: str
) -> None:
    from uwsgi_examples.load import fire
    from uwsgi_examples.run import Server

    _gunicorn(db_url)
    eofs = pooler.unexpected_eofs()
    with Server("gunicorn", pooler.url, processes=3) as server:
        result = fire(server.url, requests=300, concurrency=12, timeout=10)
        assert not result.errors, result.summary()
        held = {pid: tcp_ports_of(pid, pooler.port) for pid in server.children()}
        arbiter = tcp_ports_of(server.pid, pooler.port)
        clients = len(pooler.clients())
    assert len(result.pids) == 3, result.summary()
    # The arbiter queried while loading, closed before forking, and holds nothing now.
    assert arbiter == set(), (arbiter, held)
    ports = [p for worker in held.values() for p in worker]
    assert all(len(p) == 1 for p in held.values()), held  # CONN_MAX_AGE: one each, kept
    assert len(ports) == len(set(ports)) == clients, (held, clients)
    assert pooler.unexpected_eofs() == eofs, pooler.log()[-3000:]


def test_control_plain_django_preforked_workers_share_the_arbiters_pooler_connection(
    pooler: PgBouncer, db_url: str
) -> None:
    """Measured: 125 of 300 requests failed (HTTP 500), every worker on one client port."""
    from uwsgi_examples.load import fire
    from uwsgi_examples.run import Server

    if pooler.mode != "transaction":
        pytest.skip("one control is enough: the mechanism does not depend on the pool mode")
    _gunicorn(db_url)
    with Server("gunicorn", pooler.url, forksafe="0", processes=3) as server:
        result = fire(server.url, requests=300, concurrency=12, timeout=5)
        held = {pid: tcp_ports_of(pid, pooler.port) for pid in server.children()}
        arbiter = tcp_ports_of(server.pid, pooler.port)
    assert result.errors, result.summary()
    assert arbiter and all(ports == arbiter for ports in held.values()), (arbiter, held)


# --- the settings the checks flag really break under transaction pooling ---------------------


@pytest.fixture
def through_pooler(pooler: PgBouncer, db: None) -> Iterator[str]:
    """An alias ``pgbouncer`` to the run's database through ``pooler`` (removed afterwards)."""
    from django.db import connections

    connections.settings["pgbouncer"] = {
        **connections.settings["default"],
        "HOST": "127.0.0.1",
        "PORT": str(pooler.port),
        "OPTIONS": {},
    }
    yield "pgbouncer"
    connections["pgbouncer"].close()
    del connections["pgbouncer"]
    del connections.settings["pgbouncer"]


def _hold_the_idle_server_connection(pooler: PgBouncer) -> Any:
    """Another client opens a transaction: it takes the server connection that was just
    released (PgBouncer reuses the last one first), so the next transaction of the
    client under test runs on another server session."""
    from django.db import connection

    other: Any = connection.Database.connect(  # type: ignore[attr-defined]
        host="127.0.0.1", port=pooler.port, user=pooler.user, dbname=pooler.dbname
    )
    other.cursor().execute("SELECT 1")  # psycopg/psycopg2: BEGIN ..., held open
    return other


@pytest.mark.parametrize("disable", [False, True])
def test_server_side_cursor_breaks_under_transaction_pooling_unless_disabled(
    pooler: PgBouncer, through_pooler: str, disable: bool
) -> None:
    """forksafe.W006 flags what this shows: iterator() on a WITH HOLD cursor."""
    from django.db import connections

    from tests.testapp.models import Item

    if pooler.mode != "transaction":
        pytest.skip("session pooling keeps one server session per client")
    Item.objects.bulk_create([Item(name=str(i)) for i in range(5)])
    connections.settings[through_pooler]["DISABLE_SERVER_SIDE_CURSORS"] = disable
    rows = Item.objects.using(through_pooler).order_by("id").iterator(chunk_size=1)
    assert next(rows).name == "0"
    other = _hold_the_idle_server_connection(pooler)
    try:
        if disable:
            assert [r.name for r in rows] == ["1", "2", "3", "4"]
        else:
            with pytest.raises(Exception, match=r"cursor .* does not exist"):
                list(rows)
    finally:
        other.close()


@pytest.mark.parametrize("threshold", [0, None])
def test_psycopg_prepared_statements_break_under_transaction_pooling(
    pooler: PgBouncer, through_pooler: str, driver: str, threshold: int | None
) -> None:
    """forksafe.W007 flags what this shows: OPTIONS["prepare_threshold"] set to a number
    with ``server_side_binding`` (Django's default client-side binding never prepares)."""
    from django.db import connections

    from tests.testapp.models import Item

    if pooler.mode != "transaction" or driver != "psycopg":
        pytest.skip("psycopg 3 under transaction pooling only")
    settings = connections.settings[through_pooler]
    settings["OPTIONS"] = {"prepare_threshold": threshold, "server_side_binding": True}
    query = Item.objects.using(through_pooler).filter(name="x")
    assert query.count() == 0  # prepared on the server session it ran on (threshold 0)
    other = _hold_the_idle_server_connection(pooler)
    try:
        if threshold is None:
            assert query.count() == 0
        else:
            with pytest.raises(Exception, match=r"prepared statement .* does not exist"):
                query.count()
    finally:
        other.close()
