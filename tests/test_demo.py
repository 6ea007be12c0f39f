"""``forksafe demo``, run as the real console script (``python -m forksafe demo``).

Each demo row is itself a real run (fresh interpreters that fork, start threads
or pools; real uWSGI servers): these tests read the printed tables and check
that forksafe's rows are good and plain Django's rows are bad where the bug is
real on that database. The full demo runs on the run's own database, with
``--only`` picking groups to keep each driver's run short.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forksafe.demo import UWSGI_NEEDS_CHECKOUT
from tests.harness.ci import skip_or_fail
from tests.harness.demo import demo, scenario_verdicts, table_rows

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/forksafe_nowhere"


def quiet_database(db_url: str) -> None:
    """Wait (5 s at most) until sessions of earlier tests' processes have ended, so that
    the demo's before/after counts see its own sessions only."""
    from django.db import connections

    from forksafe._sessions import settle_sessions

    connections.close_all()
    settle_sessions(0, timeout=5)


def require_uwsgi() -> None:
    from uwsgi_examples.run import missing

    reason = missing("uwsgi")
    if reason is not None:
        skip_or_fail(reason)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        skip_or_fail("matplotlib is not installed (pip install 'forksafe[plot]')")


# --- the tables ----------------------------------------------------------------------------


@pytest.mark.nodb
def test_demo_on_sqlite_shows_plain_children_on_the_parents_handle_and_threads_leaking_handles(
    vendor: str, tmp_path: Path
) -> None:
    if vendor != "sqlite":
        pytest.skip("the SQLite demo runs once, in the sqlite3 run")
    proc = demo("--only", "fork,pools,threads,queues", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = scenario_verdicts(proc.stdout)
    assert len(rows) == 18, proc.stdout  # 5 fork, 1 pool, 3 thread rows, two modes each
    for (title, mode), cells in rows.items():
        if mode == "forksafe":
            assert cells[-1] == "ok", (title, cells)
    # SQLite forbids carrying a handle across fork: without forksafe, the child uses it.
    for title in (
        "child runs ORM queries, exits",
        "other parent thread holds a connection",
        "fork Pool(2) after the parent queried",
    ):
        assert rows[(title, "plain")][3] == "NO", rows[(title, "plain")]
        assert rows[(title, "plain")][-1] == "BROKEN"
        assert rows[(title, "forksafe")][3] == "yes"
    # Ended threads keep their handle on the database file open until the GC runs.
    for title in (
        "50 short threads, joined (forksafe.Thread)",
        "50 threading.Threads (install(threads=True))",
        "8-worker executor, 200 tasks, shutdown()",
    ):
        assert int(rows[(title, "plain")][4]) > 0, rows[(title, "plain")]
        assert rows[(title, "plain")][-1] == "BROKEN"
        assert rows[(title, "forksafe")][4] == "0", rows[(title, "forksafe")]
    # The RQ row counts what a server saw abandoned: on SQLite it says so instead of "ok".
    assert "RQ row skipped: it counts the sessions the server saw abandoned" in proc.stdout
    # Progress: one line per scenario and mode as it finishes (stderr is not a TTY here).
    assert proc.stderr.count("\n") == 18, proc.stderr
    assert "[18/18] 8-worker executor" in proc.stderr


@pytest.mark.nodb
def test_demo_on_sqlite_runs_without_the_demo_extra_and_a_server_url_names_it(
    vendor: str, tmp_path: Path
) -> None:
    if vendor != "sqlite":
        pytest.skip("the SQLite demo runs once, in the sqlite3 run")
    proc = demo("--only", "threads", cwd=tmp_path, hide_dj_database_url=True)
    assert proc.returncode == 0, proc.stderr
    assert len(scenario_verdicts(proc.stdout)) == 6, proc.stdout
    hidden = demo(
        "--database", UNREACHABLE, "--only", "fork", cwd=tmp_path, hide_dj_database_url=True
    )
    assert hidden.returncode == 2, hidden.stderr
    assert "pip install 'forksafe[demo]'" in hidden.stderr, hidden.stderr
    assert hidden.stderr.count("\n") == 1, hidden.stderr


@pytest.mark.nodb
def test_demo_from_an_installed_package_says_in_one_line_how_to_see_the_uwsgi_rows(
    vendor: str, tmp_path: Path
) -> None:
    """forksafe/ alone on the path, as a wheel installs it (``-S``: no editable .pth)."""
    if vendor != "sqlite":
        pytest.skip("the SQLite demo runs once, in the sqlite3 run")
    import django

    import forksafe

    site = tmp_path / "site"
    shutil.copytree(Path(forksafe.__file__).parent, site / "forksafe")
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(Path(django.__file__).parents[1])])
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "forksafe", "demo", "--only", "uwsgi"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("skipped:")]
    assert skipped == [f"skipped: {UWSGI_NEEDS_CHECKOUT}"], proc.stdout


def test_demo_on_the_server_database_shows_the_bugs_without_forksafe_and_none_with_it(
    db_url: str, vendor: str, tmp_path: Path
) -> None:
    if vendor == "sqlite":
        pytest.skip("SQLite: see the test above (no server sessions to count)")
    quiet_database(db_url)
    proc = demo("--database", db_url, "--only", "fork,pools,threads", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = scenario_verdicts(proc.stdout)
    assert len(rows) >= 18, proc.stdout
    for (title, mode), cells in rows.items():
        if mode == "forksafe":
            assert cells[-1] == "ok", (title, cells)
    plain = {title: cells for (title, mode), cells in rows.items() if mode == "plain"}
    # The child's close_all() sends the driver's goodbye on the parent's socket.
    assert plain["child calls connections.close_all()"][2].startswith("NO"), plain
    # Querying children and pool workers run on the parent's session.
    for title in (
        "child runs ORM queries, exits",
        "other parent thread holds a connection",
        "fork Pool(2) after the parent queried",
    ):
        assert plain[title][3] == "NO", plain[title]
    # Joined threads and a shut-down executor leave their sessions open until the GC runs.
    for title in (
        "50 short threads, joined (forksafe.Thread)",
        "50 threading.Threads (install(threads=True))",
        "8-worker executor, 200 tasks, shutdown()",
    ):
        assert int(plain[title][4]) > 0, plain[title]
    assert all(cells[-1] == "BROKEN" for cells in plain.values()), plain


def test_demo_rq_row_shows_plain_rq_abandoning_a_session_per_job_and_forksafe_none(
    db_url: str, driver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.harness.queues import REDIS_URL, require_heavy_driver, require_redis

    require_heavy_driver(driver)
    require_redis()
    monkeypatch.setenv("FORKSAFE_DEMO_REDIS_URL", REDIS_URL)
    quiet_database(db_url)
    proc = demo("--database", db_url, "--only", "queues", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = scenario_verdicts(proc.stdout)
    title = "RQ worker, 5 jobs (a forked horse each)"
    assert rows[(title, "plain")][-2:] == ["0 (5 abandoned)", "BROKEN"], proc.stdout
    assert rows[(title, "forksafe")][-2:] == ["0 (0 abandoned)", "ok"], proc.stdout


def test_demo_uwsgi_rows_show_workers_on_the_masters_session_only_without_forksafe(
    db_url: str, driver: str, tmp_path: Path
) -> None:
    args = ["--only", "uwsgi"]
    if driver in ("psycopg", "mysqlclient"):
        args += ["--database", db_url]
    elif driver != "sqlite3":
        pytest.skip("the uWSGI demo runs for sqlite3, psycopg and mysqlclient (driver-agnostic)")
    require_uwsgi()
    proc = demo(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r[0]: r for r in table_rows(proc.stdout, 7) if r[0] in ("plain", "forksafe")}
    assert set(rows) == {"plain", "forksafe"}, proc.stdout
    mode, _, errors, pids, sessions, on_master, verdict = rows["forksafe"]
    assert (errors, pids, on_master, verdict) == ("0", "4", "0", "ok"), proc.stdout
    if driver != "sqlite3":
        assert sessions == "4", proc.stdout
    plain = rows["plain"]
    assert plain[-1] == "BROKEN", proc.stdout
    assert int(plain[2]) > 0 or int(plain[5]) > 0, proc.stdout


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.nodb
def test_demo_with_a_bad_database_url_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    for url in ("not-a-url", "oracle://scott@localhost/db"):
        proc = demo("--database", url, cwd=tmp_path)
        assert proc.returncode == 2, (url, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("forksafe demo: bad --database:"), proc.stderr
        assert proc.stdout == ""


@pytest.mark.nodb
def test_demo_with_an_unreachable_database_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    for url in (UNREACHABLE, f"sqlite:///{tmp_path}/no/such/dir/db.sqlite3"):
        proc = demo("--database", url, "--only", "fork", cwd=tmp_path)
        assert proc.returncode == 2, (url, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("forksafe demo: cannot connect to"), proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.nodb
def test_demo_with_an_unknown_only_group_exits_2_naming_the_valid_ones(tmp_path: Path) -> None:
    proc = demo("--only", "fork,uwgsi", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown group uwgsi; choose from fork,pools,threads,queues,uwsgi" in proc.stderr


# --- --plot ---------------------------------------------------------------------------------


@pytest.mark.nodb
def test_demo_plot_on_sqlite_says_it_needs_a_server_and_exits_2(tmp_path: Path) -> None:
    proc = demo("--plot", str(tmp_path / "x.png"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "SQLite has none" in proc.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.nodb
def test_demo_plot_without_matplotlib_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    proc = demo("--database", UNREACHABLE, "--plot", "x.png", cwd=tmp_path, hide_matplotlib=True)
    assert proc.returncode == 2
    assert proc.stderr == (
        "forksafe demo: --plot needs matplotlib, which is not installed:"
        " pip install 'forksafe[plot]'\n"
    )


def test_demo_plot_writes_a_png_of_sessions_over_time(
    db_url: str, vendor: str, tmp_path: Path
) -> None:
    if vendor == "sqlite":
        pytest.skip("--plot needs a server database (tested above: exit 2 on SQLite)")
    require_matplotlib()
    quiet_database(db_url)
    png = tmp_path / "sessions.png"
    proc = demo("--database", db_url, "--plot", str(png), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    assert f"wrote {png}" in proc.stdout
    safe = re.search(r"forksafe\.Thread: peak \d+ sessions, (-?\d+) left", proc.stdout)
    assert safe is not None and int(safe.group(1)) == 0, proc.stdout
    plain = re.search(r"plain Django\): peak \d+ sessions, (-?\d+) left", proc.stdout)
    assert plain is not None and int(plain.group(1)) > 0, proc.stdout
