"""Test matrix: Python x Django, each against every driver (one pytest run per settings module).

``nox -t ci`` is what ``python3 dev.py test`` and CI run; plain ``nox`` runs the whole matrix.
``nox -t compat`` runs Django's own test-suite with forksafe installed (``tests/compat``), one
session per row; CI runs the row marked in ``MATRIX``. ``nox -s docs`` builds the docs site.
"""

from __future__ import annotations

import nox
import nox.command

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

DRIVERS = ("sqlite3", "psycopg", "psycopg2", "mysqlclient", "pymysql")
MATRIX = [
    # (python, django, tests in CI, compat gate in CI)
    ("3.11", "4.2", False, False),
    ("3.11", "5.2", True, True),
    ("3.12", "5.2", False, False),
    ("3.13", "6.1", True, False),
]
DJANGO_SPECS = {"4.2": "Django~=4.2.0", "5.2": "Django~=5.2.0", "6.1": "Django~=6.1.0"}


@nox.session(python="3.11", tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff (lint + format), mypy --strict and the import layers (import-linter)."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("lint-imports")  # the layers of pyproject.toml's [tool.importlinter]


@nox.session(python="3.11", tags=["ci"])
def docs(session: nox.Session) -> None:
    """The docs site (docs/_build/html): warnings are errors, every internal reference resolves.

    ``-n`` (nitpicky) makes a reference that does not resolve a warning: MyST's links between
    pages and to headings, and the roles of the docstrings autodoc renders; ``-W`` makes
    warnings errors. External links are not checked (CI has no network).
    """
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-n",
        "-E",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


def _tests(session: nox.Session, django: str) -> None:
    session.install("-e", ".[test]", DJANGO_SPECS[django])
    drivers = session.posargs or DRIVERS
    failed = []
    for driver in drivers:
        # Every driver runs even when an earlier one failed: the log then shows all of it.
        try:
            session.run(
                "python",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                env={"DJANGO_SETTINGS_MODULE": f"tests.settings.{driver}"},
            )
        except nox.command.CommandFailed:
            failed.append(driver)
    if failed:
        session.error(f"tests failed for: {', '.join(failed)}")


def _compat(session: nox.Session, django: str) -> None:
    """Django's own tests with and without forksafe (``python -m tests.compat.gate``)."""
    session.install("-e", ".[compat]", DJANGO_SPECS[django])
    # posargs: servers (postgresql, mysql), --labels ..., --all, --fresh-baseline.
    cache = session.cache_dir / "compat"
    session.run("python", "-m", "tests.compat.gate", "--cache", str(cache), *session.posargs)


for _python, _django, _ci, _compat_ci in MATRIX:

    def _session(session: nox.Session, django: str = _django) -> None:
        _tests(session, django)

    def _compat_session(session: nox.Session, django: str = _django) -> None:
        """Django's own test-suite with forksafe.install(threads=True) (tests/compat)."""
        _compat(session, django)

    nox.session(
        python=_python,
        name=f"tests-{_python}-django{_django}",
        tags=["ci", "tests"] if _ci else ["tests"],
    )(_session)
    nox.session(
        python=_python,
        name=f"compat-{_python}-django{_django}",
        tags=["ci", "compat"] if _compat_ci else ["compat"],
    )(_compat_session)
