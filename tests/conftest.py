"""Test set-up: one database driver per run, chosen by ``DJANGO_SETTINGS_MODULE``.

``tests.settings.sqlite3`` is the default (no server needed). A run whose
server is not answering skips its tests with the reason -- except when ``CI`` is
set (any non-empty value), where a missing server fails the run: CI must never go
green without having talked to PostgreSQL and MariaDB.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import tempfile
from collections.abc import Iterator

import pytest

from tests.harness.ci import in_ci

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings.sqlite3")
# This run's own SQLite file (see tests/settings/_base.py), removed at the end.
_SQLITE_PATH = os.path.join(tempfile.gettempdir(), f"forksafe-tests-{os.getpid()}.sqlite3")
os.environ.setdefault("FORKSAFE_TEST_SQLITE_PATH", _SQLITE_PATH)

# A test run started in the background by a shell inherits SIGINT ignored, and so would the
# servers it starts: Twisted (daphne) then keeps ignoring SIGINT, its graceful stop signal,
# and the shutdown tests time out. A handler is reset to the default in exec'd children.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_server_problem: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server_problem
    import django

    import forksafe

    # Before django.setup(), as the README tells users to.
    forksafe.install()
    django.setup()

    from django.conf import settings
    from django.db import connection

    if connection.vendor == "sqlite":
        return
    try:
        connection.ensure_connection()
    except Exception as exc:
        _server_problem = (
            f"{settings.FORKSAFE_TEST_DRIVER}: no database server at"
            f" {settings.FORKSAFE_TEST_URL} ({type(exc).__name__}: {exc})"
        )
        if in_ci():
            raise pytest.UsageError(
                f"CI={os.environ['CI']} and the database server is missing: {_server_problem}."
                " Start it (see .ci/run) instead of skipping these tests."
            ) from exc
    finally:
        connection.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(_SQLITE_PATH + suffix)


def pytest_report_header(config: pytest.Config) -> str:
    from django.conf import settings

    return f"forksafe test database: {settings.FORKSAFE_TEST_URL}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _server_problem is None:
        return
    skip = pytest.mark.skip(reason=_server_problem)
    for item in items:
        if "nodb" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_close_before_fork() -> Iterator[None]:
    """Every test starts with the suite's option, whatever it set (install() is global)."""
    from forksafe import _fork

    saved = _fork._options.close_before_fork
    yield
    _fork._options.close_before_fork = saved


@pytest.fixture(scope="session")
def django_db_setup() -> Iterator[None]:
    """Create the test app's table once per run, drop it at the end."""
    from django.db import connection

    from tests.testapp.models import Item

    with connection.schema_editor() as editor:
        if Item._meta.db_table in connection.introspection.table_names():
            editor.delete_model(Item)
        editor.create_model(Item)
    connection.close()
    yield
    with connection.schema_editor() as editor:
        editor.delete_model(Item)
    connection.close()


@pytest.fixture
def db(django_db_setup: None) -> Iterator[None]:
    """Fresh table contents; every connection of this thread closed afterwards."""
    from django.db import connections

    from tests.testapp.models import Item

    Item.objects.all().delete()
    yield
    connections.close_all()


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Keep the cyclic GC from closing finished threads' connections behind our back."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@pytest.fixture
def conn_max_age(request: pytest.FixtureRequest) -> Iterator[None]:
    """Set ``CONN_MAX_AGE`` of the default alias for the wrappers created in this test."""
    from django.db import connections

    settings_dict = connections.settings["default"]
    old = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = request.param
    try:
        yield
    finally:
        settings_dict["CONN_MAX_AGE"] = old


@pytest.fixture
def threads_installed() -> Iterator[None]:
    """``install(threads=True)`` for the test, then the suite's setting again."""
    import forksafe

    forksafe.install(threads=True)
    try:
        yield
    finally:
        forksafe.install(threads=False)  # the test-suite's setting


@pytest.fixture
def baseline(example_db: str) -> Iterator[int]:
    """Server sessions before the test's server starts (``example_db``: the server tests'
    module fixture, which migrates the example project's database)."""
    from tests.harness.prefork import session_baseline

    yield from session_baseline(example_db)


@pytest.fixture
def abandoned(example_db: str) -> int:
    """The server's settled count of abandoned sessions before the test's server starts."""
    from tests.harness.sessions import settled_abandoned

    return settled_abandoned()


@pytest.fixture(scope="session")
def db_url() -> str:
    from django.conf import settings

    url: str = settings.FORKSAFE_TEST_URL
    return url


@pytest.fixture(scope="session")
def driver() -> str:
    from django.conf import settings

    name: str = settings.FORKSAFE_TEST_DRIVER
    return name


@pytest.fixture(scope="session")
def vendor() -> str:
    from django.db import connection

    name: str = connection.vendor
    return name
