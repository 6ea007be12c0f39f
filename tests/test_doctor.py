"""``forksafe doctor`` and ``manage.py forksafe_doctor``: findings and exit codes, real databases.

The exit-code tests run the real console script and ``python -m django
forksafe_doctor`` (what ``manage.py`` runs) in fresh processes against the
run's database; the session-grouping test calls :func:`run_doctor` in this
process while it holds sessions of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from forksafe.doctor import detect_sizing, run_doctor

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).parent / "forksafe"
CONSOLE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "forksafe"]
MANAGE = [sys.executable, "-m", "django", "forksafe_doctor"]

needs_server = pytest.mark.skipif(
    connections["default"].vendor == "sqlite", reason="SQLite has no server sessions"
)


def _run(
    command: list[str], *args: str, settings_module: str | None = None, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` + ``args`` from the repository root with this run's settings."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = settings_module or os.environ["DJANGO_SETTINGS_MODULE"]
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (path, ROOT) if p is not None)
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )


def _settings_module(tmp_path: Path, changes: str) -> str:
    """A settings module in ``tmp_path``: this run's test settings plus ``changes``."""
    source = textwrap.dedent(
        f"""
        from tests.settings._base import settings_for

        globals().update(settings_for({settings.FORKSAFE_TEST_DRIVER!r}))
        """
    )
    (tmp_path / "doctor_settings.py").write_text(source + textwrap.dedent(changes))
    return "doctor_settings"


def _report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_healthy_setup_exits_0_from_the_console_script() -> None:
    proc = _run(CONSOLE, "doctor", "--processes", "2", "--threads", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No problems found." in proc.stdout
    assert "fork hooks installed" in proc.stdout
    if connections["default"].vendor != "sqlite":
        assert "of max_connections" in proc.stdout
        assert ": ok" in proc.stdout


def test_healthy_setup_exits_0_from_the_management_command_as_json() -> None:
    proc = _run(MANAGE, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _report(proc)
    assert report["exit_code"] == 0
    assert report["hooks_installed"] is True
    assert [s["error"] for s in report["databases"]] == [None]
    assert sorted(report["databases"][0]["aliases"]) == sorted(settings.DATABASES)


def test_unreachable_database_is_a_finding_with_exit_1_and_no_traceback(tmp_path: Path) -> None:
    module = _settings_module(
        tmp_path,
        """
        for _db in DATABASES.values():
            if _db["ENGINE"].endswith("sqlite3"):
                _db["NAME"] = "/nonexistent-forksafe-dir/db.sqlite3"
            else:
                _db["PORT"] = 1  # nothing listens there
        """,
    )
    for command in (CONSOLE + ["doctor"], MANAGE):
        proc = _run(command, settings_module=module, path=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "cannot connect" in proc.stdout
        assert "Traceback" not in proc.stdout + proc.stderr


@needs_server
def test_demand_above_max_connections_exits_1() -> None:
    proc = _run(MANAGE, "--processes", "1000", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 problem(s)" in proc.stderr
    report = _report(proc)
    server = report["databases"][0]
    assert server["demand"] > server["max_connections"]
    errors = [f for f in report["findings"] if f["level"] == "error"]
    assert len(errors) == 1
    assert "exceeds" in errors[0]["message"]
    assert errors[0]["message"].startswith("demand 1000 x 1 x ")


@needs_server
def test_demand_counts_processes_threads_and_aliases_and_native_pools() -> None:
    report = run_doctor(processes=3, threads=5)
    server = report.databases[0]
    # tests/settings: aliases "default" and "other", 3 processes x 5 threads each = 30;
    # psycopg adds "pooled" (min_size 2, max_size 4): 4 sessions per process = 12 more.
    expected = 42 if settings.FORKSAFE_TEST_DRIVER == "psycopg" else 30
    assert set(settings.DATABASES) == (
        {"default", "other", "pooled"}
        if settings.FORKSAFE_TEST_DRIVER == "psycopg"
        else {"default", "other"}
    )
    assert server.demand == expected
    assert server.max_connections is not None and server.max_connections > 0


def test_each_pooled_alias_gets_a_line_with_its_bound_and_this_process_figures() -> None:
    if "pooled" not in settings.DATABASES:
        pytest.skip("the test settings have a pooled alias with psycopg 3 only")
    connections["pooled"].close()
    with connections["pooled"].cursor() as cursor:
        cursor.execute("SELECT 1")
    try:
        (line,) = [f.message for f in run_doctor(threads=3).findings if f.topic == "pool 'pooled'"]
    finally:
        connections["pooled"].close()
    # min_size 2, max_size 4: with 3 threads a process holds up to 3; this one holds one.
    head = "django.db.backends.postgresql: up to 3 session(s) per process with 3 thread(s);"
    assert line.startswith(head + " in this process: size ")
    figures = dict(re.findall(r"(size|idle|in use|waits|timeouts) (\d+)", line))
    assert int(figures["in use"]) >= 1
    assert int(figures["size"]) == int(figures["idle"]) + int(figures["in use"]) <= 4
    assert figures["timeouts"] == "0"


@needs_server
def test_session_grouping_shows_this_tests_own_sessions() -> None:
    before = _groups(run_doctor())
    held = [connections.create_connection("default") for _ in range(3)]
    try:
        for conn in held:
            conn.ensure_connection()
        after = _groups(run_doctor())
    finally:
        for conn in held:
            conn.close()
    grown = {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}
    assert list(grown.values()) == [3], (before, after)
    ((client, state),) = grown
    assert client in ("127.0.0.1", "localhost", "::1"), client  # the address, without a port
    assert state in ("idle", "Sleep")


def _groups(report: Any) -> dict[tuple[str, str], int]:
    server = report.databases[0]
    assert server.error is None, server.error
    return {(client, state): n for client, state, n, _ in server.sessions}


def test_forksafe_check_errors_are_findings_with_exit_1(tmp_path: Path) -> None:
    module = _settings_module(tmp_path, 'FORKSAFE = {"TREADS": True}\n')
    proc = _run(CONSOLE, "doctor", "--json", settings_module=module, path=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [f for f in _report(proc)["findings"] if f["level"] == "error"]
    assert [f["topic"] for f in problems] == ["forksafe.E001"]
    assert "'TREADS'" in problems[0]["message"]


def test_hooks_not_installed_is_a_warning_with_exit_1(tmp_path: Path) -> None:
    module = _settings_module(tmp_path, 'FORKSAFE = {"INSTALL": False}\n')
    proc = _run(CONSOLE, "doctor", settings_module=module, path=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fork hooks NOT installed" in proc.stdout
    assert "INSTALLED_APPS" in proc.stdout


@pytest.mark.nodb
@pytest.mark.parametrize("command", ["console", "manage"])
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--processes", "0"], "--processes: must be a whole number >= 1, not '0'"),
        (["--threads", "many"], "--threads: must be a whole number >= 1, not 'many'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(command: str, args: list[str], says: str) -> None:
    base = CONSOLE + ["doctor"] if command == "console" else MANAGE
    proc = _run(base, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert says in lines[0]
    assert proc.stdout == ""


@pytest.mark.nodb
def test_console_script_without_settings_exits_2_naming_the_option() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [*CONSOLE, "doctor"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "forksafe doctor: error: no Django settings: pass --settings MODULE or set"
        " DJANGO_SETTINGS_MODULE"
    )


@pytest.mark.nodb
def test_console_script_with_a_missing_settings_module_exits_2() -> None:
    proc = _run(CONSOLE, "doctor", "--settings", "no_such_settings_module")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "forksafe doctor: error: cannot load settings 'no_such_settings_module':"
        " ModuleNotFoundError: No module named 'no_such_settings_module'"
    ]


@pytest.mark.nodb
@pytest.mark.parametrize("value", [0, -1])
def test_run_doctor_rejects_counts_below_one(value: int) -> None:
    with pytest.raises(ValueError, match="processes must be a whole number >= 1"):
        run_doctor(processes=value)


@pytest.mark.nodb
def test_sizing_comes_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UWSGI_PROCESSES", "UWSGI_WORKERS", "UWSGI_THREADS", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    assert detect_sizing(None, None)[:2] == (1, 1)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert detect_sizing(None, None)[:2] == (3, 1)
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--bind :8000 -w 6 --threads 4")
    processes, threads, sizing = detect_sizing(None, None)
    assert (processes, threads) == (6, 4)
    assert "GUNICORN_CMD_ARGS --workers" in sizing
    assert detect_sizing(2, 8)[:2] == (2, 8)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            "[groups.web]\nprocesses = 4\n[limits]\n",
            "unknown key 'limits' (only 'groups' is known)",
        ),
        ("[groups.web]\nprocesses = -2\n", "group 'web': processes must be a whole number >= 0"),
        ("[groups.web]\nprocesses = 2.5\n", "group 'web': processes must be a whole number >= 0"),
        ("[groups.web]\nworkers = 4\n", "group 'web': unknown key 'workers'"),
        ("[groups.web\n", "not valid TOML"),
    ],
)
def test_bad_fleet_file_exits_2_with_one_clear_line(
    tmp_path: Path, content: str, says: str
) -> None:
    (tmp_path / "fleet.toml").write_text(content)
    proc = _run(CONSOLE, "doctor", "--fleet", str(tmp_path / "fleet.toml"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"forksafe doctor: error: {tmp_path / 'fleet.toml'}: "), line
    assert says in line
    assert proc.stdout == ""


def test_fleet_with_counts_on_the_command_line_or_a_bad_console_exits_2(tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_text('{"groups": {"web": {"processes": 2}}}')
    fleet = str(tmp_path / "fleet.json")
    proc = _run(MANAGE, "--fleet", fleet, "--processes", "4")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "CommandError: --fleet takes the counts from the file: leave out --processes/--threads"
    ]
    proc = _run(CONSOLE, "doctor", "--pooler-console", "postgresql://u@127.0.0.1:1/pgbouncer")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "--pooler-console 127.0.0.1:1: no PostgreSQL alias in DATABASES connects there" in line


@needs_server
def test_fleet_against_the_database_server_exits_1_when_max_connections_is_exceeded(
    tmp_path: Path,
) -> None:
    aliases = len(settings.DATABASES)
    (tmp_path / "small.toml").write_text('[groups.web]\nprocesses = 2\naliases = ["default"]\n')
    proc = _run(CONSOLE, "doctor", "--fleet", str(tmp_path / "small.toml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Every limit holds." in proc.stdout
    (tmp_path / "big.toml").write_text("[groups.web]\nhosts = 100\nprocesses = 8\nthreads = 4\n")
    proc = _run(MANAGE, "--fleet", str(tmp_path / "big.toml"), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (row,) = json.loads(proc.stdout)["limits"]
    assert row["limit_name"] == "max_connections" and row["verdict"] == "EXCEEDS"
    pools = [db.get("OPTIONS", {}).get("pool") for db in settings.DATABASES.values()]
    plain = aliases - sum(1 for p in pools if p)
    expected = 100 * 8 * 4 * plain + sum(
        100 * 8 * max(p["min_size"], min(4, p["max_size"])) for p in pools if p
    )
    assert row["demand"] == expected
