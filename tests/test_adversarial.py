"""What an adversarial run found, and connections forksafe does not recognise.

Each test failed before its fix. The scripts run in fresh interpreters when the
order of imports and hooks is the point (the test process installed forksafe
in ``conftest.py``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from typing import Any

import pytest
from django.db import connection, transaction

import forksafe
from forksafe import _drivers, _registry
from forksafe._sessions import backend_id, own_connection
from forksafe._urls import database_settings, split_url
from tests.harness.forking import run_in_child
from tests.testapp.models import Item

pytestmark = pytest.mark.usefixtures("db")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _forksafe_records(level: int) -> tuple[logging.Logger, list[logging.LogRecord]]:
    """Collect the ``forksafe`` records at ``level`` and above (the caller restores the level)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logger = logging.getLogger("forksafe")
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger, records


# --- the registry lets go of a closed connection ----------------------------------------------


def test_registry_lets_go_of_a_connection_when_django_closes_it() -> None:
    connection.ensure_connection()
    raw = connection.connection
    assert any(entry.raw is raw for entry in _registry.entries())
    connection.close()
    assert not any(entry.raw is raw for entry in _registry.entries())
    del raw


def test_short_threads_leave_no_closed_connection_alive_until_the_gc(vendor: str) -> None:
    """``threads=True``: each thread's connection is freed when it is closed, not at GC time.

    PyMySQL 2.x gives each connection its own SSL context: 2,000 threads grew the
    process by 90 MB when the registry kept the closed connections alive.
    """
    forksafe.install(threads=True)
    try:
        before = len(_registry.entries())
        gc.disable()  # what is measured must not depend on when the cyclic GC runs
        try:
            for _ in range(40):
                thread = threading.Thread(target=backend_id)
                thread.start()
                thread.join(30)
            left = len(_registry.entries())
        finally:
            gc.enable()
    finally:
        forksafe.install(threads=False)
    assert left <= before


# --- a connection half-way through close() at fork time -----------------------------------------


def test_a_pymysql_connection_closing_at_fork_time_is_not_reported_above_debug(
    driver: str,
) -> None:
    if driver != "pymysql":
        pytest.skip("only PyMySQL keeps a socket object whose fileno() is -1 while closing")
    conn = own_connection()
    conn.ensure_connection()
    # What another thread's close() leaves for a moment: the socket closed (with the
    # buffered reader that also held it), not yet dropped.
    conn.connection._rfile.close()
    conn.connection._sock.close()
    assert conn.connection._sock.fileno() == -1

    raw = conn.connection
    logger, records = _forksafe_records(logging.INFO)  # the child's reset logs into it

    def child() -> list[str]:
        # The at-fork hook has detached ``raw`` already; again, by hand:
        return [_drivers.detach(raw, owned=False, alias="closing")] + [
            r.getMessage() for r in records
        ]

    try:
        assert run_in_child(child) == ["closed-already"]
    finally:
        logger.removeHandler(logger.handlers[-1])
        logger.setLevel(logging.NOTSET)
        conn.connection = None


# --- warnings turned into errors ----------------------------------------------------------------


def test_fork_inside_atomic_under_warnings_as_errors_reports_no_failed_cleanup() -> None:
    forksafe.install(close_before_fork=True)
    logger, records = _forksafe_records(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with transaction.atomic():
                Item.objects.create(name="in atomic")
                run_in_child(lambda: None)
    finally:
        logger.removeHandler(logger.handlers[-1])
        logger.setLevel(logging.NOTSET)
    messages = [r.getMessage() for r in records]
    assert not any("failed" in m for m in messages), messages
    assert not any(r.exc_info for r in records)
    assert any("inside a transaction" in m for m in messages), messages
    assert Item.objects.filter(name="in atomic").count() == 1


# --- at-fork hooks of the application ------------------------------------------------------------

_SCRIPT = """
import json, os, sys
import django
from django.conf import settings
from django.db import connections

# Nothing of forksafe imported yet, no "forksafe" app: install() only where told.
if sys.argv[3] == "psycopg2":
    sys.modules["psycopg"] = None
elif sys.argv[3] == "pymysql":
    import pymysql
    pymysql.install_as_MySQLdb()
settings.configure(DATABASES={"default": json.loads(sys.argv[2])}, USE_TZ=True)

def user_hook():
    connections.close_all()  # the well-known advice, in an at-fork hook

if sys.argv[1] == "before-import":
    os.register_at_fork(after_in_child=user_hook)
assert "forksafe" not in sys.modules
import forksafe
if sys.argv[1] == "before-install":
    os.register_at_fork(after_in_child=user_hook)
if sys.argv[1] != "after-fork":
    forksafe.install()
django.setup()
from forksafe._sessions import backend_id

parent = backend_id()
read_fd, write_fd = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        if sys.argv[1] == "after-fork":
            forksafe.install()
        report = {"child": backend_id()}
        connections.close_all()
    except BaseException as exc:
        report = {"error": repr(exc)}
    os.write(write_fd, json.dumps(report).encode())
    os._exit(0)
os.close(write_fd)
os.waitpid(pid, 0)
child = json.loads(os.read(read_fd, 10000))
try:
    after = backend_id()
except Exception as exc:
    after = repr(exc)
print(json.dumps({"parent": parent, "after": after, **child}))
"""


def _run(order: str, url: str) -> dict[str, Any]:
    database = json.dumps(database_settings(url))
    driver = split_url(url)[1]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), order, database, driver],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = proc.stderr
    return result


@pytest.mark.parametrize("order", ["before-import", "before-install"])
def test_an_at_fork_hook_closing_connections_never_kills_the_parent_session(
    vendor: str, db_url: str, order: str
) -> None:
    if vendor == "sqlite":
        pytest.skip("a shared server session needs a server")
    result = _run(order, db_url)
    assert result["after"] == result["parent"], result
    assert result["child"] != result["parent"], result
    if order == "before-install":  # forksafe's hook runs first: nothing to report
        assert "was forked without forksafe's reset" not in result["stderr"], result["stderr"]


def test_install_called_after_the_fork_detaches_what_the_child_inherited(
    vendor: str, db_url: str
) -> None:
    if vendor == "sqlite":
        pytest.skip("a shared server session needs a server")
    result = _run("after-fork", db_url)
    assert result["child"] != result["parent"], result
    assert result["after"] == result["parent"], result
    assert "install() was called after this process was forked" in result["stderr"]


# --- connections forksafe does not recognise --------------------------------------------------


class ThirdPartyConnection:
    """A connection of a backend forksafe knows nothing about, on a real server socket."""

    closed_calls: list[int] = []

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise AttributeError("no descriptor")
        return self._fd

    def close(self) -> None:
        self.closed_calls.append(os.getpid())


class OpaqueConnection:
    """A third-party connection that does not say which descriptor it uses."""

    def close(self) -> None:
        ThirdPartyConnection.closed_calls.append(os.getpid())


def test_an_unknown_connection_with_fileno_is_detached_by_its_descriptor(vendor: str) -> None:
    if vendor == "sqlite":
        pytest.skip("needs a server socket")
    conn = own_connection()
    conn.ensure_connection()
    fd = _drivers._socket_fd(conn.connection, _drivers.driver_of(conn.connection))
    assert fd is not None
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")

    def child() -> tuple[str, str, list[int]]:
        how = _drivers.detach(ThirdPartyConnection(fd), owned=True, alias="thirdparty")
        return how, os.readlink(f"/proc/self/fd/{fd}"), ThirdPartyConnection.closed_calls

    try:
        how, target, closed = run_in_child(child)
        assert (how, target, closed) == ("detached", os.devnull, [])
        with conn.cursor() as cursor:  # the parent's session still answers
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        conn.close()


def test_an_unknown_connection_without_a_descriptor_is_kept_unused_and_reported_once() -> None:
    def child() -> tuple[list[str], list[str], list[int]]:
        logger, records = _forksafe_records(logging.WARNING)
        hows = [_drivers.detach(OpaqueConnection(), owned=True, alias=a) for a in ("x", "y")]
        return hows, [r.getMessage() for r in records], ThirdPartyConnection.closed_calls

    hows, messages, closed = run_in_child(child)
    assert hows == ["parked", "parked"]
    assert closed == []
    [message] = messages
    assert "OpaqueConnection" in message and "fileno()" in message
