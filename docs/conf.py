"""Sphinx configuration of forksafe's documentation site (``nox -s docs``).

Markdown pages (MyST), the reference generated from the docstrings (autodoc), the Furo
theme. Built with warnings as errors and nitpicky references, so a broken internal link or
a docstring reference that does not resolve fails the build.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# autodoc imports forksafe's modules; the ones that touch Django's settings (checks, doctor,
# the app) need them configured. The smallest project that imports cleanly:
if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()

import forksafe  # noqa: E402  (after the settings)
from forksafe import doctor  # noqa: E402

project = "forksafe"
author = "forksafe developers"
copyright = "2026, forksafe developers"  # noqa: A001
release = forksafe.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

# Markdown: heading anchors for links such as ``page.md#a-heading``; ``{directive}`` fences.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# The README-block markers (``<!-- readme-test: NAME -->``) are HTML comments: MyST drops them.

# The integrations import their library at import time; the docs build needs none of them.
# django_tasks: the backport, so that forksafe.tasks imports on a Django without django.tasks.
autodoc_mock_imports = [
    "celery",
    "dramatiq",
    "huey",
    "redis",
    "rq",
    "gunicorn",
    "uwsgi",
    "uwsgidecorators",
    "gevent",
    "psycogreen",
    "django_tasks",
]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}

# No network during the build (CI has none): intersphinx inventories are not fetched, and
# external references are neither resolved nor checked. Third-party and standard-library
# names that docstrings mention in roles are listed below instead.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
nitpicky = True
nitpick_ignore_regex = [
    # The standard library, Django and the servers' own types, named in signatures.
    (
        r"py:.*",
        r"(django|celery|rq|dramatiq|huey|gunicorn|uwsgi|uwsgidecorators|asyncio|concurrent|"
        r"multiprocessing|multiprocess|threading|collections|contextlib|types|typing|os|gc|"
        r"argparse|pathlib|builtins)(\..*)?",
    ),
    (
        r"py:class",
        r"(Any|Callable|Awaitable|MutableMapping|Mapping|Iterator|Generator|"
        r"Scope|Receive|Send|Message|ASGIApp|T|P|R|_T|Self|NoReturn|"
        # Dramatiq's, as its type hints name them (dramatiq is mocked: autodoc_mock_imports).
        r"Broker|MessageProxy|WorkerThread|Worker)",
    ),
    # RQ's and Celery's types, imported for annotations only.
    (r"py:class", r"(Job|Queue|Execution|Celery)"),
    # Type variables of forksafe's signatures.
    (r"py:class", r"forksafe\.threads\.[PR]"),
    # forksafe's private modules and names (``forksafe._pooler``, ``_ClosingConnections``):
    # a docstring may point a maintainer at them; the site documents the public surface only.
    (r"py:.*", r"forksafe(\.\w+)*\._\w+(\..*)?"),
    (
        r"py:(class|exc|func|obj|data)",
        r"(RuntimeWarning|TypeError|ValueError|ImportError|"
        r"RuntimeError|AssertionError|ConnectionError|OSError|Exception|BaseException|bool|int|"
        r"str|float|dict|list|tuple|set|object|None|bytes)",
    ),
]

html_theme = "furo"
html_title = f"forksafe {release}"
html_static_path: list[str] = []

# The doctor's reference includes its ``--help``, as the command prints it.
GENERATED = Path(__file__).resolve().parent / "_generated"
GENERATED.mkdir(exist_ok=True)
os.environ["COLUMNS"] = "92"  # argparse wraps the help at this width
_help = io.StringIO()
with contextlib.redirect_stdout(_help), contextlib.suppress(SystemExit):
    doctor.main(["--help"])
(GENERATED / "doctor-help.txt").write_text(_help.getvalue())
