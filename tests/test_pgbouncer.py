"""forksafe behind a real PgBouncer (transaction and session pooling) on a loopback port.

Each test module run starts its own PgBouncer per pool mode (``tests/harness/pgbouncer.py``)
in front of the run's PostgreSQL database, for psycopg 3 and psycopg2 only. The
scenarios run in fresh interpreters (``tests/harness/programs/pooler_scenarios.py``): a client
connection to the pooler is identified by its local TCP port, which process holds
it by /proc, and a client that left without a goodbye by PgBouncer's own log
("client unexpected eof").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.pgbouncer import PgBouncer, require_pgbouncer, tcp_ports_of
from tests.harness.scripts import run_python

ROOT = Path(__file__).resolve().parent.parent
MODES = ("transaction", "session")


@pytest.fixture(scope="module", params=MODES)
def pooler(request: pytest.FixtureRequest, db_url: str, driver: str) -> Iterator[PgBouncer]:
    exe = require_pgbouncer(driver)
    with PgBouncer(exe, db_url, mode=request.param) as bouncer:
        yield bouncer


def _transaction_only(pooler: PgBouncer, what: str = "this variant") -> None:
    """Keep CI short: run ``what`` under transaction pooling only."""
    if pooler.mode != "transaction":
        pytest.skip(
            f"{what} runs under transaction pooling only (measured the same under session"
            " pooling: README, Behind PgBouncer)"
        )


def _scenario(name: str, pooler: PgBouncer, mode: str) -> dict[str, Any]:
    """Run ``tests.harness.programs.pooler_scenarios`` ``name`` through ``pooler``; its JSON
    result."""
    module = "tests.harness.programs.pooler_scenarios"
    args = ("-m", module, name, "--database", pooler.url, "--mode", mode)
    result: dict[str, Any] = run_python(*args, unset=("DJANGO_SETTINGS_MODULE",))
    return result


@pytest.mark.parametrize("mode", ["forksafe", "detach"])
def test_forked_children_never_share_the_parents_pooler_connection(
    pooler: PgBouncer, mode: str
) -> None:
    if mode == "detach":
        _transaction_only(pooler)
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
    _transaction_only(pooler, "the control")
    res = _scenario("fork", pooler, "plain")
    assert res["shared"] >= res["forks"] // 4, res
    assert res["parent_errors"] == res["shared"], res


@pytest.mark.parametrize("mode", ["forksafe", "detach"])
def test_pool_workers_each_open_their_own_pooler_connection(pooler: PgBouncer, mode: str) -> None:
    if mode == "detach":
        _transaction_only(pooler)
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
    if pooler.mode != "transaction":
        return  # the control once is enough
    plain = _scenario("threads", pooler, "plain")
    assert plain["open_after"] > 1, ("control: ended plain threads keep theirs until the GC", plain)


@pytest.fixture(scope="module")
def example_tables(db_url: str, driver: str) -> None:
    """gunicorn is there (else skip, or with CI set, fail); the example project's tables."""
    from uwsgi_examples.run import migrate, missing

    require_pgbouncer(driver)
    reason = missing("gunicorn")
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}")
        pytest.skip(reason)
    migrate(db_url)


def test_preforked_gunicorn_workers_each_hold_their_own_pooler_connection(
    pooler: PgBouncer, example_tables: None
) -> None:
    from uwsgi_examples.load import fire
    from uwsgi_examples.run import Server

    eofs = pooler.unexpected_eofs()
    with Server("gunicorn", pooler.url, processes=3) as server:
        result = fire(server.url, requests=150, concurrency=12, timeout=10)
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
    pooler: PgBouncer, example_tables: None
) -> None:
    """Measured: 125 of 300 requests failed (HTTP 500), every worker on one client port.

    A burst of short server-side sleeps: a sync worker serves one request at a time, so
    the burst reaches every worker (a burst of fast requests can all land on one worker,
    which then uses the shared connection alone and fails nothing).
    """
    from uwsgi_examples.load import fire
    from uwsgi_examples.run import Server

    _transaction_only(pooler, "the control")
    with Server("gunicorn", pooler.url, forksafe="0", processes=3) as server:
        result = fire(server.url + "sleep?seconds=0.2", requests=18, concurrency=6, timeout=5)
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


# --- forksafe doctor behind PgBouncer ----------------------------------------------------------


def _doctor(
    pooler: PgBouncer, tmp_path: Path, driver: str, *args: str, changes: str = ""
) -> subprocess.CompletedProcess[str]:
    """``forksafe doctor ARGS`` with settings whose one alias goes through ``pooler``."""
    settings = textwrap.dedent(
        f"""
        from forksafe._urls import database_settings
        from tests.settings._base import settings_for

        globals().update(settings_for({driver!r}))
        DATABASES = {{"default": database_settings({pooler.url!r})}}
        """
    )
    (tmp_path / "pooled_settings.py").write_text(settings + textwrap.dedent(changes))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    env["DJANGO_SETTINGS_MODULE"] = "pooled_settings"
    return subprocess.run(
        [sys.executable, "-m", "forksafe", "doctor", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_doctor_recognises_pgbouncer_and_reports_each_limit(
    pooler: PgBouncer, tmp_path: Path, driver: str
) -> None:
    proc = _doctor(pooler, tmp_path, driver, "--processes", "3", "--threads", "2", "--json")
    report = json.loads(proc.stdout)
    (server,) = report["databases"]
    assert server["pooler"]["pool_mode"] == pooler.mode, proc.stdout
    assert server["pooler"]["max_client_conn"] == 100
    pool = server["pooler"]["pools"][pooler.dbname]
    assert (pool["pool_size"], pool["server"]) == (20, f"127.0.0.1:{pooler.server_port}")
    limits = {row["limit_name"]: row for row in server["limits"]}
    assert limits["max_client_conn"]["demand"] == 6  # 3 processes x 2 threads x 1 alias
    assert limits["pool_size + reserve_pool"]["limit"] == 20
    assert limits["max_connections"]["demand"] == 6  # at most the pool's server connections
    messages = [f["message"] for f in report["findings"]]
    assert any(f"pools {pooler.dbname!r} in {pooler.mode} mode" in m for m in messages), messages
    warnings = [f["message"] for f in report["findings"] if f["level"] == "warning"]
    if pooler.mode == "transaction":  # the test settings keep server-side cursors on
        assert proc.returncode == 1 and len(warnings) == 1, warnings
        assert warnings[0].startswith("forksafe.W006: ")
    else:
        assert proc.returncode == 0 and warnings == [], proc.stdout


def test_doctor_under_transaction_pooling_passes_with_the_settings_it_needs(
    pooler: PgBouncer, tmp_path: Path, driver: str
) -> None:
    if pooler.mode != "transaction":
        pytest.skip("transaction pooling only")
    fixed = 'DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True\n'
    proc = _doctor(pooler, tmp_path, driver, changes=fixed + 'FORKSAFE = {"POOLER": "transaction"}')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A declaration that differs from what the console reports is a warning.
    proc = _doctor(pooler, tmp_path, driver, changes=fixed + 'FORKSAFE = {"POOLER": "session"}')
    assert proc.returncode == 1, proc.stdout
    assert "FORKSAFE['POOLER'] says 'session' for alias 'default'" in proc.stdout


def test_doctor_flags_conn_max_age_beyond_the_poolers_client_idle_timeout(
    pooler: PgBouncer, through_pooler: str
) -> None:
    from django.db import connections

    from forksafe import _pooler, doctor

    _transaction_only(pooler)
    settings = connections.settings[through_pooler]
    settings.update(CONN_MAX_AGE=None, DISABLE_SERVER_SIDE_CURSORS=True)
    pooler.admin("SET client_idle_timeout = 30")
    try:
        found = _pooler.read_console(*_pooler.console_params(through_pooler))
    finally:
        pooler.admin("SET client_idle_timeout = 0")
    warnings = [
        (m, h)
        for level, m, h in doctor.pooler_findings(found, [through_pooler], {})
        if level == "warning"
    ]
    assert len(warnings) == 1, warnings
    assert "closes clients idle for client_idle_timeout 30 s" in warnings[0][0]
    assert "CONN_HEALTH_CHECKS = True" in warnings[0][1]
    settings["CONN_HEALTH_CHECKS"] = True
    assert not [f for f in doctor.pooler_findings(found, [through_pooler], {}) if f[0] == "warning"]


def test_fleet_through_pgbouncer_exits_1_naming_the_exceeded_limit(
    pooler: PgBouncer, tmp_path: Path, driver: str
) -> None:
    _transaction_only(pooler)
    (tmp_path / "big.toml").write_text(
        "[groups.web]\nhosts = 6\nprocesses = 8\nthreads = 4\n"
        "[groups.celery]\nhosts = 3\ncelery = 16\n"
    )
    proc = _doctor(pooler, tmp_path, driver, "--fleet", str(tmp_path / "big.toml"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    (clients,) = [line for line in lines if "max_client_conn" in line]
    assert clients.split()[-3:] == ["240", "100", "EXCEEDS"], clients
    (server,) = [line for line in lines if "max_connections" in line]
    assert server.split()[-3] == "20" and server.split()[-1] == "ok", server  # the pool's 20
    (tmp_path / "small.json").write_text('{"groups": {"web": {"hosts": 2, "processes": 4}}}')
    proc = _doctor(pooler, tmp_path, driver, "--fleet", str(tmp_path / "small.json"), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert [(r["limit_name"], r["demand"], r["verdict"]) for r in report["limits"]] == [
        ("max_client_conn", 8, "ok"),
        ("pool_size + reserve_pool", 8, "ok"),
        ("max_connections", 8, "ok"),
    ]


def test_pooler_console_given_by_url_is_used_and_a_refusing_one_exits_2(
    pooler: PgBouncer, tmp_path: Path, driver: str
) -> None:
    _transaction_only(pooler)
    console = f"postgresql://{pooler.user}@127.0.0.1:{pooler.port}/pgbouncer"
    proc = _doctor(pooler, tmp_path, driver, "--pooler-console", console, "--json")
    assert json.loads(proc.stdout)["databases"][0]["pooler"]["pool_mode"] == pooler.mode
    refused = console.replace(f"{pooler.user}@", "nobody@")
    proc = _doctor(pooler, tmp_path, driver, "--pooler-console", refused)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"forksafe doctor: error: --pooler-console 127.0.0.1:{pooler.port}: no PgBouncer"
        ' console answers: FATAL: "trust" authentication failed'
    ]


def test_a_declared_pooler_whose_console_refuses_is_a_warning_and_stops_the_fleet(
    tmp_path: Path, db_url: str, driver: str
) -> None:
    """Single host: a finding that says what to do; --fleet cannot size without it: exit 2."""
    exe = require_pgbouncer(driver)
    (tmp_path / "fleet.toml").write_text("[groups.web]\nprocesses = 2\n")
    declared = 'FORKSAFE = {"POOLER": "transaction"}\n'
    with PgBouncer(exe, db_url, settings={"admin_users": "nobody"}) as refusing:
        single = _doctor(refusing, tmp_path, driver, changes=declared)
        fleet = _doctor(refusing, tmp_path, driver, "--fleet", str(tmp_path / "fleet.toml"))
    assert single.returncode == 1, single.stdout + single.stderr
    assert "no PgBouncer console: FATAL: not allowed" in single.stdout
    assert "add USER 'postgres' to stats_users" in single.stdout
    assert fleet.returncode == 2, fleet.stdout + fleet.stderr
    assert fleet.stderr.strip().splitlines() == [
        f"forksafe doctor: error: pgbouncer 127.0.0.1:{refusing.port}: its admin console does"
        " not answer: FATAL: not allowed"
    ]
