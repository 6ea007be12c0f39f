"""The user's path: the README applied to a project fresh from ``django-admin startproject``.

Each test generates a project for the installed Django in a temporary directory, edits it
the way a user does -- ``DATABASES`` replaced by the run's database server, ``ALLOWED_HOSTS``,
``CONN_MAX_AGE`` where a server keeps connections, a view that answers with its process id
and its server session -- and places the README's two lines (``import forksafe``,
``forksafe.install()``, read from the README's quick start) where the README says they may
go: at the top of ``manage.py``, ``wsgi.py``, ``asgi.py`` or the settings module; or adds
``"forksafe"`` to ``INSTALLED_APPS`` and nothing else. Then it runs what users run, from the
project directory, in fresh processes that import the installed forksafe: ``manage.py check``
and ``migrate``, ``runserver``, gunicorn, uWSGI, uvicorn and gunicorn's uvicorn workers, and
stops every server the way it is stopped in production (``SIGTERM``; ``runserver`` with a
terminal's Ctrl-C, ``SIGINT`` to its process group).

What is asserted comes from the database server: no error, each worker process on sessions
of its own, no session left after the stop beyond what the configuration keeps, and none
abandoned without a goodbye (PostgreSQL's ``pg_stat_database.sessions_abandoned``,
MariaDB's ``Aborted_clients``). The PostgreSQL half runs in the psycopg run, the MariaDB half
in the mysqlclient run: the path does not depend on the driver within one server.
"""

from __future__ import annotations

import ast
import os
import pprint
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.ci import skip_or_fail
from tests.harness.prefork import SERVER_DRIVERS
from tests.harness.scripts import ROOT
from tests.harness.sessions import wait_sessions_gone
from uwsgi_examples.asgi_burst import Run, measure_server
from uwsgi_examples.run import Server, binary, free_port, missing

#: Where the README's lines go, by file of the generated project; ``INSTALLED_APPS``: the
#: app alone, no ``install()`` call anywhere.
PLACEMENTS = ("manage.py", "wsgi.py", "asgi.py", "settings.py", "INSTALLED_APPS")
WORKERS = 2
THREADS = 4
#: A persistent connection per worker (thread): what the servers' tests keep and close.
CONN_MAX_AGE = 60
REQUESTS = 200
CONCURRENCY = 8

_VIEWS = '''\
"""Which process, and which database session, answers."""

import os
import sys

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import JsonResponse

LOADER = {"loader_pid": None, "loader_backend": None}


def backend():
    sql = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
    with connection.cursor() as cursor:
        cursor.execute(sql[connection.vendor])
        return cursor.fetchone()[0]


def query_at_import():
    """What many applications do while they load: a query (warm a cache, check the schema)."""
    LOADER.update(loader_pid=os.getpid(), loader_backend=backend())


def answer():
    session = backend()
    forksafe = sys.modules.get("forksafe")  # never imported here: the control stays plain
    stats = forksafe.stats().get("default", {}) if forksafe else {}
    return {
        "pid": os.getpid(),
        "backend": session,
        "vendor": connection.vendor,
        "tracked": stats.get("opened", 0),
        **LOADER,
    }


def whoami(request):
    return JsonResponse(answer())


async def whoami_in_executor(request):
    """The loop's default executor (``thread_sensitive=False``), shared by every request."""
    return JsonResponse(await sync_to_async(answer, thread_sensitive=False)())
'''

_URLS = """
from mysite import views

urlpatterns += [
    path("", views.whoami),
    path("executor", views.whoami_in_executor),
]
"""


@pytest.fixture(scope="module", autouse=True)
def _server_drivers(driver: str) -> None:
    if driver not in SERVER_DRIVERS:
        pytest.skip(
            "the user path runs for psycopg (PostgreSQL) and mysqlclient (MariaDB) only: it"
            " does not depend on the driver within one server"
        )
    if binary("django-admin") is None:
        skip_or_fail(f"django-admin is not installed in {sys.prefix}")


def readme_install_lines() -> str:
    """The code of the README's quick start block that calls ``forksafe.install()``."""
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"^```python\n(.*?)^```", readme, re.M | re.S):
        if "forksafe.install()" in block:
            code = [line for line in block.splitlines() if not line.startswith("#")]
            return "\n".join(code).strip() + "\n"
    raise AssertionError("README.md shows no ```python block calling forksafe.install()")


def _project_env() -> dict[str, str]:
    """This environment minus what would point the project elsewhere (the test settings)."""
    env = dict(os.environ)
    for name in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH"):
        env.pop(name, None)
    return env


def _at_top(source: str, lines: str) -> str:
    """``lines`` inserted before the first statement after the module docstring."""
    body = ast.parse(source).body
    has_docstring = (
        bool(body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    after = (body[0].end_lineno or 0) if has_docstring else 0
    if not has_docstring:  # keep a shebang and leading comments first
        rows = source.splitlines()
        while after < len(rows) and rows[after].startswith("#"):
            after += 1
    rows = source.splitlines(keepends=True)
    return "".join(rows[:after]) + "\n" + lines + "\n" + "".join(rows[after:])


@dataclass
class Project:
    """A project generated by ``django-admin startproject mysite``, edited as a user would."""

    root: Path
    placement: str | None

    @property
    def package(self) -> Path:
        return self.root / "mysite"

    def edit(self, name: str, new: str) -> None:
        (self.package / name).write_text(new)

    def read(self, name: str) -> str:
        return (self.package / name).read_text()

    def run(self, *args: str, timeout: float = 120) -> str:
        """``python ARGS`` in the project directory; its output. Fails the test on an error."""
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env=_project_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output, status = proc.stdout + proc.stderr, proc.returncode
        assert status == 0, f"python {' '.join(args)} ({self.placement}):\n{output}"
        return output

    def manage(self, *args: str) -> str:
        return self.run("manage.py", *args)


def generate_project(
    directory: Path,
    placement: str | None,
    *,
    conn_max_age: int | None = None,
    query_at_import: bool = False,
) -> Project:
    """``django-admin startproject mysite DIRECTORY`` with the README applied at ``placement``
    (None: plain Django), the run's database, and the view. ``conn_max_age``: set in
    ``DATABASES`` (None: Django's default, 0); ``query_at_import``: ``wsgi.py`` queries
    once the application is loaded."""
    from django.conf import settings

    from forksafe._urls import database_settings

    assert placement is None or placement in PLACEMENTS, placement
    django_admin = binary("django-admin")
    assert django_admin is not None
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [django_admin, "startproject", "mysite", str(directory)],
        env=_project_env(),
        check=True,
        timeout=60,
        capture_output=True,
    )
    project = Project(directory, placement)
    lines = readme_install_lines()

    database = database_settings(settings.FORKSAFE_TEST_URL)
    if conn_max_age is not None:
        database["CONN_MAX_AGE"] = conn_max_age
    source = project.read("settings.py")
    source, n = re.subn(
        r"^DATABASES = \{\n.*?^\}\n",
        f"DATABASES = {pprint.pformat({'default': database})}\n",
        source,
        flags=re.M | re.S,
    )
    assert n == 1, "the generated settings.py has no DATABASES block"
    source, n = re.subn(
        r"^ALLOWED_HOSTS = \[\]", 'ALLOWED_HOSTS = ["127.0.0.1", "localhost"]', source, flags=re.M
    )
    assert n == 1, "the generated settings.py has no ALLOWED_HOSTS"
    if placement == "INSTALLED_APPS":
        source, n = re.subn(
            r"^INSTALLED_APPS = \[\n", '\\g<0>    "forksafe",\n', source, flags=re.M
        )
        assert n == 1, "the generated settings.py has no INSTALLED_APPS"
    elif placement == "settings.py":
        source = _at_top(source, lines)
    project.edit("settings.py", source)

    project.edit("views.py", _VIEWS)
    project.edit("urls.py", project.read("urls.py") + _URLS)
    if query_at_import:
        wsgi = project.read("wsgi.py") + "\nfrom mysite.views import query_at_import\n"
        project.edit("wsgi.py", wsgi + "\nquery_at_import()\n")
    if placement == "manage.py":
        path = project.root / "manage.py"
        path.write_text(_at_top(path.read_text(), lines))
    elif placement in ("wsgi.py", "asgi.py"):
        project.edit(placement, _at_top(project.read(placement), lines))
    return project


# --- manage.py check and migrate, every placement --------------------------------------------


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_manage_py_check_and_migrate_work_with_each_placement(
    placement: str, tmp_path: Path
) -> None:
    """And the entry points load: what a WSGI / ASGI server imports first."""
    project = generate_project(tmp_path / "project", placement)
    assert "System check identified no issues" in project.manage("check")
    project.manage("migrate", "--verbosity", "1")
    hooks = "import forksafe._fork as f; print('hooks', f.hooks_installed())"
    everywhere = placement in ("settings.py", "INSTALLED_APPS")
    for module in ("wsgi", "asgi"):
        loaded = project.run("-c", f"import mysite.{module}; print(mysite.{module}.application)")
        assert "Handler" in loaded, loaded
        # install() ran in the process where the README put it.
        installed = project.run("-c", f"import mysite.{module}; {hooks}")
        assert f"hooks {everywhere or placement == f'{module}.py'}" in installed, installed
    if everywhere or placement == "manage.py":
        assert "hooks True" in project.manage("shell", "-c", hooks)


# --- servers ---------------------------------------------------------------------------------


#: The programs each server configuration needs (runserver: Django's own).
_PROGRAMS = {
    "runserver": (),
    "gunicorn-sync": ("gunicorn",),
    "gunicorn-gthread": ("gunicorn",),
    "gunicorn-preload": ("gunicorn",),
    "uwsgi-master": ("uwsgi",),
    "uwsgi-no-master": ("uwsgi",),
    "uvicorn": ("uvicorn",),
    "gunicorn-uvicorn": ("gunicorn", "uvicorn"),
}


class ProjectServer(Server):
    """A server of :func:`generate_project`'s project, run from its directory."""

    def __init__(self, project: Project, config: str, *, workers: int = WORKERS) -> None:
        for program in _PROGRAMS[config]:
            reason = missing(program)
            if reason is not None:
                skip_or_fail(reason)
        self.cwd = project.root
        self.project = project
        self.workers = workers
        super().__init__(config, "", processes=workers)

    def _pick_port(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cmd = self.command(self.port)
        self.env = _project_env()

    def command(self, port: int) -> list[str]:
        bind = f"127.0.0.1:{port}"
        workers = str(self.workers)
        gunicorn = [
            str(binary("gunicorn")),
            "--bind",
            bind,
            "--workers",
            workers,
            "--no-control-socket",  # several servers may run at once on this machine
        ]
        uwsgi = [
            str(binary("uwsgi")),
            "--http-socket",
            bind,
            "--chdir",
            str(self.project.root),
            "--module",
            "mysite.wsgi:application",
            "--virtualenv",
            sys.prefix,
            "--processes",
            workers,
            "--need-app",
            "--die-on-term",  # uWSGI 2.0 reloads on SIGTERM without it
            "--disable-logging",
        ]
        commands = {
            "runserver": [sys.executable, "manage.py", "runserver", bind],
            "gunicorn-sync": [*gunicorn, "mysite.wsgi"],
            "gunicorn-gthread": [*gunicorn, "--threads", str(THREADS), "mysite.wsgi"],
            "gunicorn-preload": [*gunicorn, "--preload", "mysite.wsgi"],
            "uwsgi-master": [*uwsgi, "--master"],
            "uwsgi-no-master": uwsgi,
            "uvicorn": [
                str(binary("uvicorn")),
                "mysite.asgi:application",
                "--port",
                str(port),
                "--no-access-log",
            ],
            "gunicorn-uvicorn": [
                *gunicorn,
                "--worker-class",
                "uvicorn.workers.UvicornWorker",
                "mysite.asgi:application",
            ],
        }
        return commands[self.config]

    @property
    def graceful_signal(self) -> int:
        """``SIGTERM``, as systemd, Docker and Kubernetes stop a server; runserver: Ctrl-C."""
        return signal.SIGINT if self.config == "runserver" else signal.SIGTERM


def serve(project: Project, config: str, paths: list[str], *, workers: int = WORKERS) -> Run:
    """Start ``config`` on ``project``, a burst at each of ``paths``, stop it as production
    does (runserver: Ctrl-C, to its whole process group; uWSGI without master: SIGTERM to
    each of its processes)."""
    server = ProjectServer(project, config, workers=workers)
    mode = project.placement or "plain"
    return measure_server(
        server,
        paths,
        mode=mode,
        requests=REQUESTS,
        concurrency=CONCURRENCY,
        # runserver: a terminal's Ctrl-C. uWSGI without master: no process forwards the
        # signal to the other workers, so it goes to all of them, as systemd's default
        # KillMode=control-group sends it (one SIGTERM to the first leaves the rest running).
        group=config in ("runserver", "uwsgi-no-master"),
    )


def assert_clean(run: Run, *, workers: int, keeps: int) -> None:
    """0 errors; each worker process on sessions of its own, forksafe installed there; at
    most ``keeps`` sessions open after each burst; after the stop none of them left, and
    none abandoned."""
    summary = run.summary()
    assert not run.errors(), summary
    assert "Traceback" not in run.log, summary
    signum = signal.SIGINT if run.config == "runserver" else signal.SIGTERM
    # None: it had to be killed. 30: uWSGI's own normal end (UWSGI_END_CODE, core/uwsgi.h).
    ends = (0, -signum, 30) if run.config.startswith("uwsgi") else (0, -signum)
    assert run.status in ends, summary
    seen: set[int] = set()
    for result in run.results.values():
        assert len(result.pids) >= min(workers, 2), summary
        assert result.shared_backends == {}, summary
        assert result.on_loader_session == 0, summary
        assert all(r["tracked"] > 0 for r in result.responses), summary
        seen |= result.backends
    # Below 0: sessions of earlier work ended meanwhile, not a failure of this one.
    assert all(left <= keeps for left in run.left.values()), summary
    assert run.left_after_stop <= 0, summary
    wait_sessions_gone(seen)
    assert run.abandoned == 0, summary


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The generated project's tables exist in the run's database (admin, auth, sessions)."""
    generate_project(tmp_path_factory.mktemp("migrate"), None).manage("migrate")


@pytest.fixture
def project_dir(migrated: None, tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "project"


def test_runserver_with_install_in_manage_py_gives_each_request_thread_its_own_session(
    project_dir: Path,
) -> None:
    """A thread per request, Django's default ``CONN_MAX_AGE`` (0, as generated): each
    request closes its connection. (With ``CONN_MAX_AGE`` > 0 each ended request thread
    keeps its session until the GC runs, with or without forksafe: ``FORKSAFE["THREADS"]``
    is off outside ASGI.)"""
    project = generate_project(project_dir, "manage.py")
    run = serve(project, "runserver", [""])
    assert_clean(run, workers=1, keeps=0)


@pytest.mark.parametrize(
    ("config", "placement", "keeps"),
    [
        pytest.param(
            "gunicorn-sync", "settings.py", WORKERS, id="gunicorn-sync-install-in-settings.py"
        ),
        pytest.param(
            "gunicorn-gthread",
            "wsgi.py",
            WORKERS * THREADS,
            id="gunicorn-gthread-install-in-wsgi.py",
        ),
        pytest.param("uwsgi-master", "wsgi.py", WORKERS, id="uwsgi-master-install-in-wsgi.py"),
    ],
)
def test_wsgi_server_workers_keep_own_sessions_and_say_goodbye_at_sigterm(
    project_dir: Path, config: str, placement: str, keeps: int
) -> None:
    project = generate_project(project_dir, placement, conn_max_age=CONN_MAX_AGE)
    run = serve(project, config, [""])
    assert_clean(run, workers=WORKERS, keeps=keeps)
    if config != "gunicorn-gthread":
        for result in run.results.values():
            assert all(len(b) == 1 for b in result.backends_by_pid.values()), run.summary()


@pytest.mark.parametrize("config", ["gunicorn-preload", "uwsgi-no-master"])
def test_workers_forked_after_wsgi_py_queried_get_sessions_of_their_own(
    project_dir: Path, config: str
) -> None:
    """``wsgi.py`` queries while the application loads, before the server forks."""
    project = generate_project(
        project_dir, "wsgi.py", conn_max_age=CONN_MAX_AGE, query_at_import=True
    )
    run = serve(project, config, [""])
    assert_clean(run, workers=WORKERS, keeps=WORKERS)


def test_control_plain_django_preloaded_workers_share_the_arbiter_session(
    project_dir: Path,
) -> None:
    """Without forksafe, the same project under ``gunicorn --preload``: the workers query
    over the arbiter's session (or fail on it)."""
    project = generate_project(project_dir, None, conn_max_age=CONN_MAX_AGE, query_at_import=True)
    server = ProjectServer(project, "gunicorn-preload")
    run = measure_server(server, [""], mode="plain", requests=100, concurrency=CONCURRENCY)
    result = run.results[""]
    assert result.on_loader_session > 0 or result.errors, run.summary()


@pytest.mark.parametrize(
    ("placement", "conn_max_age"),
    [
        # The README's advice under ASGI: CONN_MAX_AGE = 0 (a pool aside).
        pytest.param("asgi.py", 0, id="install-in-asgi.py"),
        # Persistent connections: the executor's threads keep theirs until the shutdown.
        pytest.param("INSTALLED_APPS", CONN_MAX_AGE, id="the-app-alone"),
    ],
)
@pytest.mark.parametrize("config", ["uvicorn", "gunicorn-uvicorn"])
def test_asgi_server_stopped_with_sigterm_abandons_no_session(
    project_dir: Path, config: str, placement: str, conn_max_age: int
) -> None:
    """The sync view (a thread per request) and the loop's default executor
    (``sync_to_async(thread_sensitive=False)``)."""
    project = generate_project(project_dir, placement, conn_max_age=conn_max_age)
    workers = 1 if config == "uvicorn" else WORKERS
    run = serve(project, config, ["", "executor"], workers=workers)
    executor = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor size
    assert_clean(run, workers=workers, keeps=executor * workers)
