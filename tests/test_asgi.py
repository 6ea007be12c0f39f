"""Async Django under real ASGI servers, and ``forksafe.asgi`` in a real event loop.

The server tests run ``uwsgi_examples/exampleproject/asgi.py`` under uvicorn,
daphne and gunicorn with uvicorn's workers (``preload_app``: the arbiter loads the
application and queries before it forks), for psycopg and mysqlclient only (the
integration is driver-independent; each driver's detach is tested elsewhere).
Views: ``/`` sync (a new thread per request), ``/async`` (``sync_to_async``, the
request's thread), ``/async-unsafe`` (``thread_sensitive=False``) and ``/to-thread``
(``asyncio.to_thread``), both in the loop's default executor. What is asserted comes
from the database server: sessions left open after a burst, and its count of sessions
abandoned without a goodbye (``pg_stat_database.sessions_abandoned``, MariaDB's
``Aborted_clients``) across a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import threading
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import forksafe.asgi
from forksafe import threads
from forksafe._sessions import backend_id, count_sessions, quiet_sessions, settle_sessions
from tests.harness.demo import demo, table_rows
from tests.harness.prefork import require_server
from uwsgi_examples.asgi_burst import Run, measure, measure_server
from uwsgi_examples.run import Server

REQUESTS = 120
CONCURRENCY = 8
#: The loop's default executor: min(32, CPUs + 4) threads (asyncio's default size).
EXECUTOR_WORKERS = min(32, (os.cpu_count() or 1) + 4)


@pytest.fixture(scope="module")
def example_db(db_url: str, driver: str) -> str:
    return require_server("uvicorn", db_url, driver)


#: ``measure`` with this file's burst size.
serve = functools.partial(measure, requests=REQUESTS, concurrency=CONCURRENCY)


def assert_goodbye(run: Run) -> None:
    """0 errors, a graceful exit, every session closed, none abandoned."""
    assert not run.errors(), run.summary()
    assert run.status == 0, run.summary()
    assert run.left_after_stop <= 0, run.summary()
    assert run.abandoned == 0, run.summary()


# --- uvicorn ---------------------------------------------------------------------------------


def test_control_plain_django_under_uvicorn_leaves_a_session_per_request_thread(
    example_db: str,
) -> None:
    """Without forksafe, ``CONN_MAX_AGE=60``: every request connects, and leaks until the GC."""
    run = serve("uvicorn", example_db, [""], forksafe="0")
    assert not run.errors(), run.summary()
    assert len(run.results[""].backends) > REQUESTS // 2, run.summary()
    assert run.left[""] >= 10, run.summary()


def test_control_plain_executor_threads_ignore_conn_max_age(example_db: str) -> None:
    """Without forksafe, ``CONN_MAX_AGE=0`` never closes the default executor's sessions."""
    run = serve("uvicorn", example_db, ["async-unsafe"], forksafe="0", conn_max_age=0)
    assert not run.errors(), run.summary()
    assert run.left["async-unsafe"] >= 1, run.summary()


def test_uvicorn_closes_request_threads_and_keeps_executor_sessions_until_shutdown(
    example_db: str,
) -> None:
    """Sync and async views: nothing left; the executor keeps one session per worker."""
    paths = ["", "async", "async-unsafe", "to-thread"]
    run = serve("uvicorn", example_db, paths)
    assert run.left[""] == 0, run.summary()
    assert run.left["async"] == 0, run.summary()
    # The executor's workers keep their sessions across tasks, on purpose.
    assert 0 < run.left["async-unsafe"] <= EXECUTOR_WORKERS, run.summary()
    assert run.left["to-thread"] <= EXECUTOR_WORKERS, run.summary()
    executor_backends = run.results["async-unsafe"].backends | run.results["to-thread"].backends
    assert len(executor_backends) <= EXECUTOR_WORKERS, run.summary()
    assert_goodbye(run)


@pytest.mark.parametrize("mode", ["forksafe", "plain"])
def test_uvicorn_stopped_with_sigterm_closes_what_the_application_opened_while_loading(
    example_db: str, mode: str
) -> None:
    """The example's ``asgi.py`` queries while loading, in the loop's thread; uvicorn re-raises
    ``SIGTERM`` after the lifespan shutdown, so that is that connection's last chance."""
    server = Server("uvicorn", example_db, forksafe="1" if mode == "forksafe" else "0", processes=1)
    run = measure_server(server, [""], requests=20, concurrency=4, signum=signal.SIGTERM)
    assert not run.errors(), run.summary()
    if mode == "plain":
        assert run.abandoned is not None and run.abandoned >= 1, run.summary()
    else:
        assert run.abandoned == 0, run.summary()


def test_uvicorn_executor_applies_conn_max_age_zero_after_every_task(example_db: str) -> None:
    run = serve("uvicorn", example_db, ["to-thread"], conn_max_age=0)
    assert run.left == {"to-thread": 0}, run.summary()
    assert_goodbye(run)


# --- daphne and gunicorn's uvicorn workers -------------------------------------------------


def test_daphne_closes_request_threads_and_says_goodbye_at_shutdown(
    example_db: str, driver: str, db_url: str
) -> None:
    require_server("daphne", db_url, driver)
    run = serve("daphne", example_db, ["async", "async-unsafe"])
    assert run.left["async"] == 0, run.summary()
    assert run.left["async-unsafe"] <= EXECUTOR_WORKERS, run.summary()
    assert_goodbye(run)


def test_gunicorn_uvicorn_workers_preloaded_get_own_sessions_and_say_goodbye(
    example_db: str, driver: str, db_url: str
) -> None:
    """The arbiter queried before forking; SIGTERM (graceful) ends the workers."""
    require_server("gunicorn-uvicorn", db_url, driver)
    run = serve("gunicorn-uvicorn", example_db, ["", "async-unsafe"])
    for result in run.results.values():
        # 2 workers (a third if the arbiter replaced one it found too slow on a busy machine).
        assert len(result.pids) >= 2, run.summary()
        assert result.on_loader_session == 0, run.summary()
        assert result.shared_backends == {}, run.summary()
    assert run.left[""] == 0, run.summary()
    executor = run.results["async-unsafe"]
    # What is left is the executors' sessions, kept on purpose: at most one per thread.
    assert len(executor.backends) <= EXECUTOR_WORKERS * len(executor.pids), run.summary()
    assert run.left["async-unsafe"] <= len(executor.backends), run.summary()
    assert_goodbye(run)


def test_control_plain_gunicorn_uvicorn_workers_abandon_executor_sessions_at_sigterm(
    example_db: str, driver: str, db_url: str
) -> None:
    """uvicorn re-raises SIGTERM with gunicorn's default handler: no goodbye without lifespan."""
    require_server("gunicorn-uvicorn", db_url, driver)
    run = serve("gunicorn-uvicorn", example_db, ["async-unsafe"], forksafe="0")
    assert not run.errors(), run.summary()
    assert run.abandoned is not None and run.abandoned > 0, run.summary()


# --- pools: Django's native pool, forksafe's ----------------------------------------------


@pytest.mark.parametrize("pool", ["1", "dbcp"], ids=["native-or-forksafe", "dbcp"])
def test_a_pool_under_uvicorn_stays_within_its_size_and_closes_at_shutdown(
    example_db: str, pool: str
) -> None:
    """``OPTIONS["pool"]``: Django's native pool (psycopg 3), forksafe's (MariaDB); and
    django-db-connection-pool's. Each at most 8 sessions (a process); goodbyes at shutdown."""
    paths = ["", "async", "async-unsafe"]
    run = serve("uvicorn", example_db, paths, conn_max_age=0, env={"EXAMPLE_POOL": pool})
    for path in paths:
        assert len(run.results[path].backends) <= 8, run.summary()  # the pool's max_size
        assert run.left[path] <= 8, run.summary()
    assert_goodbye(run)


# --- forksafe.asgi in an event loop of this process ----------------------------------------


def _server_sessions() -> int:
    n = count_sessions()
    assert n is not None
    return n


async def _sessions_now() -> int:
    """Count from a thread of its own: Django refuses queries in the loop's thread."""
    with ThreadPoolExecutor(1) as counter:
        return await asyncio.get_running_loop().run_in_executor(counter, _server_sessions)


def test_install_default_executor_outside_a_running_loop_says_where_to_call_it() -> None:
    with pytest.raises(RuntimeError, match="needs the running event loop.*LifespanMiddleware"):
        forksafe.asgi.install_default_executor()


def test_install_default_executor_twice_returns_the_same_executor() -> None:
    async def main() -> tuple[object, object, object]:
        first = forksafe.asgi.install_default_executor()
        second = forksafe.asgi.install_default_executor(max_workers=3)
        used = await asyncio.get_running_loop().run_in_executor(
            None, lambda: threading.current_thread().name
        )
        return first, second, used

    first, second, used = asyncio.run(main())
    assert first is second
    assert isinstance(first, threads.ThreadPoolExecutor)
    assert str(used).startswith("forksafe-asyncio")


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4"])
def test_install_default_executor_rejects_a_bad_size(bad: object) -> None:
    async def main() -> None:
        forksafe.asgi.install_default_executor(max_workers=bad)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="max_workers must be a whole number"):
        asyncio.run(main())


def test_replaced_executor_keeps_its_size_and_is_shut_down() -> None:
    old = ThreadPoolExecutor(3)

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(old)
        executor = forksafe.asgi.install_default_executor()
        return executor._max_workers

    assert asyncio.run(main()) == 3
    with pytest.raises(RuntimeError, match="after shutdown"):
        old.submit(int)


@pytest.mark.parametrize("conn_max_age", [0], indirect=True)
@pytest.mark.usefixtures("conn_max_age", "no_gc")
def test_executor_threads_apply_django_rules_and_close_when_the_loop_ends(
    vendor: str, db: None
) -> None:
    """``asyncio.to_thread`` + ``CONN_MAX_AGE=0``: closed after each task; none left at the end."""
    if vendor == "sqlite":
        pytest.skip("counts server sessions")
    before = quiet_sessions()

    async def main(install: bool) -> int:
        if install:
            forksafe.asgi.install_default_executor(max_workers=4)
        else:
            # The forksafe app's cover_event_loops() would give the loop forksafe's executor
            # at its first run_in_executor(None): a loop given its own keeps it.
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(4))
        for _ in range(3):
            await asyncio.gather(*(asyncio.to_thread(backend_id) for _ in range(4)))
        return await _sessions_now()

    assert asyncio.run(main(True)) == before  # closed after every task
    assert settle_sessions(before) == before
    # The control: a stock executor keeps them open, whatever CONN_MAX_AGE says.
    during = asyncio.run(main(False))
    assert during is not None and before is not None and during > before
    gc.collect()


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
@pytest.mark.usefixtures("conn_max_age", "no_gc")
def test_lifespan_middleware_installs_at_startup_and_closes_at_shutdown(
    vendor: str, db: None
) -> None:
    if vendor == "sqlite":
        pytest.skip("counts server sessions")
    before = quiet_sessions()
    seen: list[str] = []

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append("http")
        await asyncio.to_thread(backend_id)

    wrapped = forksafe.asgi.LifespanMiddleware(app)
    sent, during, after = asyncio.run(
        run_lifespan(wrapped, lambda receive, send: wrapped({"type": "http"}, receive, send))
    )
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen == ["http"]
    assert before is not None and during == before + 1
    # The worker's session closed by the shutdown, in the worker, without the GC; and the
    # session quiet_sessions() opened in this thread, where the loop ran: what a server's
    # loop thread opened while the application loaded gets no other goodbye.
    assert after == before - 1


async def run_lifespan(app: Any, work: Any) -> tuple[list[str], int, int]:
    """Drive ``app``'s lifespan: startup, ``await work(receive, send)``, shutdown.

    Returns the message types ``app`` sent and the server's session counts during the
    work and after the shutdown.
    """
    inbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.sleep(0.05)
    await work(inbox.get, send)
    during = await _sessions_now()
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, timeout=10)
    return sent, during, await _sessions_now()


@pytest.mark.parametrize("conn_max_age", [None], indirect=True)
@pytest.mark.usefixtures("conn_max_age", "no_gc")
def test_djangos_asgi_handler_answers_lifespan_when_the_forksafe_app_is_installed(
    vendor: str, db: None
) -> None:
    """``get_asgi_application()`` alone: the executor's session closes at the lifespan shutdown."""
    if vendor == "sqlite":
        pytest.skip("counts server sessions")
    from django.core.asgi import get_asgi_application

    before = quiet_sessions()
    application = get_asgi_application()

    async def work(receive: object, send: object) -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop._default_executor, forksafe.ThreadPoolExecutor)  # type: ignore[attr-defined]
        await loop.run_in_executor(None, backend_id)

    sent, during, after = asyncio.run(run_lifespan(application, work))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert before is not None and during == before + 1
    assert after == before - 1  # and this thread's own, as above


@pytest.mark.nodb
def test_control_djangos_own_asgi_handler_rejects_lifespan() -> None:
    """What the forksafe app changes: Django's handler alone refuses the lifespan scope."""
    from django.core.handlers.asgi import ASGIHandler

    original = ASGIHandler.__call__.__forksafe_original__  # type: ignore[attr-defined]

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: object) -> None:
        raise AssertionError(f"sent {message!r}")

    with pytest.raises(ValueError, match="lifespan"):
        asyncio.run(original(ASGIHandler(), {"type": "lifespan"}, receive, send))


# --- forksafe demo --only asgi -------------------------------------------------------------


@pytest.mark.nodb
def test_demo_asgi_rows_on_sqlite_say_why_they_are_skipped(vendor: str, tmp_path: Path) -> None:
    if vendor != "sqlite":
        pytest.skip("the SQLite demo runs once, in the sqlite3 run")
    proc = demo("--only", "asgi", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: the ASGI rows count server sessions" in proc.stdout, proc.stdout


def test_demo_asgi_rows_show_plain_request_threads_leaking_and_forksafe_ok(
    example_db: str, driver: str, tmp_path: Path
) -> None:
    if driver != "mysqlclient":
        pytest.skip("runs once, for mysqlclient (psycopg adds native-pool rows: twice the servers)")
    proc = demo("--database", example_db, "--only", "asgi", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {(r[1], r[2]): r for r in table_rows(proc.stdout, 8) if r[2] in ("plain", "forksafe")}
    assert len(rows) == 6, proc.stdout
    assert all(r[-1] == "ok" for (_, mode), r in rows.items() if mode == "forksafe"), proc.stdout
    assert rows[("sync view", "plain")][-1] == "BROKEN", proc.stdout
    assert int(rows[("sync view", "plain")][5]) > 0, proc.stdout


def test_lifespan_middleware_wraps_only_callables() -> None:
    with pytest.raises(TypeError, match="wraps an ASGI application"):
        forksafe.asgi.LifespanMiddleware("exampleproject.asgi:application")  # type: ignore[arg-type]


# --- forksafe.W005 and forksafe doctor -----------------------------------------------------


def _databases(max_age: int | None, pool: bool = False) -> dict[str, Any]:
    from django.conf import settings

    default = {**settings.DATABASES["default"], "CONN_MAX_AGE": max_age}
    if pool:
        default["OPTIONS"] = {**default.get("OPTIONS", {}), "pool": True}
    return {"default": default}


@pytest.mark.nodb
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    ("max_age", "pool", "reason", "fires"),
    [
        (60, False, "running under uvicorn", True),
        (None, False, "running under uvicorn", True),
        (0, False, "running under uvicorn", False),
        (60, True, "running under uvicorn", False),
        (60, False, None, False),
    ],
)
def test_w005_fires_under_asgi_for_persistent_connections_without_a_pool(
    max_age: int | None, pool: bool, reason: str | None, fires: bool
) -> None:
    from django.test import override_settings

    from forksafe import checks

    with override_settings(DATABASES=_databases(max_age, pool)):
        messages = checks.asgi_messages(reason)
    assert [m.id for m in messages] == (["forksafe.W005"] if fires else [])
    if fires:
        assert "'default' (CONN_MAX_AGE=" in messages[0].msg
        assert "CONN_MAX_AGE = 0" in str(messages[0].hint)


@pytest.mark.nodb
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_w005_is_a_system_check_when_asgi_application_is_set() -> None:
    from django.test import override_settings

    from forksafe import checks

    with override_settings(DATABASES=_databases(60), ASGI_APPLICATION="mysite.asgi.application"):
        ids = [m.id for m in checks.forksafe_checks()]
    assert "forksafe.W005" in ids


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_doctor_names_persistent_connections_when_an_asgi_server_is_installed() -> None:
    from django.test import override_settings

    from forksafe import doctor

    if not any(doctor._installed(name) for name in ("uvicorn", "daphne")):
        pytest.skip("no ASGI server installed (pip install 'forksafe[asgi]')")
    with override_settings(DATABASES=_databases(60)):
        findings = doctor._asgi_findings()
    assert len(findings) == 1 and findings[0].level == "info", findings
    assert "'default' CONN_MAX_AGE=60" in findings[0].message
    assert "CONN_MAX_AGE = 0" in findings[0].hint


@pytest.mark.nodb
def test_call_at_first_request_refuses_what_it_could_not_call() -> None:
    with pytest.raises(TypeError, match="takes a function, not 'forksafe.checks'"):
        forksafe.asgi.call_at_first_request("forksafe.checks")  # type: ignore[arg-type]
