"""What the process that loads the application does, and optional hooks of "user" code.

Environment variables (all optional):

* ``EXAMPLE_FORKSAFE``: ``1`` (default) calls ``forksafe.install()`` (and gunicorn.conf.py
  adds forksafe's server hooks too); ``wsgi`` calls ``install()`` in wsgi.py only, with no
  server hooks (what the README says is enough for gunicorn); ``hook`` leaves it to the
  gunicorn.conf.py hooks alone; ``freeze`` calls ``forksafe.install(freeze_gc=True)``;
  ``0`` runs plain Django (the control).
* ``EXAMPLE_FORKSAFE_APP``: ``1`` adds ``"forksafe"`` to ``INSTALLED_APPS`` with
  ``FORKSAFE = {"THREADS": True}`` (its ``ready()`` logs the uWSGI checks, W003).
* ``EXAMPLE_USER_HOOK``: ``decorator-before`` / ``decorator-after`` register a
  ``@uwsgidecorators.postfork`` hook that queries the database, before / after
  ``forksafe.install()``; ``raw-before`` assigns ``uwsgi.post_fork_hook`` by hand first.
* ``EXAMPLE_MULE_REPORT``: a file path; mule 1 runs ORM queries and writes what it saw there.
* ``EXAMPLE_SPOOL_REPORT``: the same for a spooler task (``GET /spool`` enqueues it).
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

#: Filled in while the application loads (uWSGI master / gunicorn arbiter, or
#: each worker with lazy-apps) and by the example post-fork hook.
STATE: dict[str, Any] = {}


def _in_uwsgi_with_master() -> bool:
    try:
        import uwsgi
    except ImportError:
        return False
    return bool(uwsgi.masterpid())


def _user_postfork() -> None:
    """Application code run after each fork: it queries the database."""
    from forksafe._sessions import backend_id

    STATE["postfork_pid"] = os.getpid()
    STATE["postfork_backend"] = backend_id()


def register_user_hook(when: str) -> None:
    """Register the example's own post-fork hook if ``EXAMPLE_USER_HOOK`` says ``when``."""
    mode = os.environ.get("EXAMPLE_USER_HOOK", "")
    if not mode.endswith(when) or not _in_uwsgi_with_master():
        return
    if mode.startswith("decorator"):
        from uwsgidecorators import postfork

        postfork(_user_postfork)
    elif mode == "raw-before":
        import uwsgi

        uwsgi.post_fork_hook = _user_postfork


def install_forksafe() -> None:
    """``forksafe.install()`` unless ``EXAMPLE_FORKSAFE`` says otherwise."""
    mode = os.environ.get("EXAMPLE_FORKSAFE", "1")
    if mode in ("1", "wsgi", "freeze"):
        import forksafe

        forksafe.install(freeze_gc=mode == "freeze")


def touch_database() -> None:
    """Query while loading, as many applications do (warm caches, check the schema...)."""
    from django.contrib.contenttypes.models import ContentType

    from forksafe._sessions import backend_id

    STATE["loader_pid"] = os.getpid()
    STATE["loader_backend"] = backend_id()
    STATE["contenttypes"] = ContentType.objects.count()


def warm_up(application: Any) -> None:
    """With ``settings.EXAMPLE_WARM_UP``: load lazily built state before the fork.

    Imports the URLconf and every view, builds the reverse map and sends a few
    requests through the WSGI ``application``, so that what Django builds on
    first use (resolver caches, compiled queries, specialised bytecode) is
    shared copy-on-write by the workers: what production deployments do in
    the loading process. Without it each worker builds its own copy.
    """
    from django.conf import settings
    from django.urls import reverse

    if not getattr(settings, "EXAMPLE_WARM_UP", False):
        return
    reverse("admin:index")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
    }
    for _ in range(20):
        b"".join(application(dict(environ), lambda status, headers, exc_info=None: None))


def _report_queries(path: str) -> None:
    """Run ORM queries in this process; write what it saw (and any error) to ``path``."""
    from django.contrib.contenttypes.models import ContentType

    from forksafe._sessions import backend_id

    report: dict[str, Any] = {"pid": os.getpid(), "loader_backend": STATE["loader_backend"]}
    try:
        report["backends"] = [backend_id() for _ in range(5)]
        report["counts"] = [ContentType.objects.count() for _ in range(5)]
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh)
    os.replace(tmp, path)


def register_mule() -> None:
    """With ``EXAMPLE_MULE_REPORT`` set: mule 1 queries through the ORM and reports."""
    path = os.environ.get("EXAMPLE_MULE_REPORT")
    if not path or not _in_uwsgi_with_master():
        return
    from uwsgidecorators import mule

    def mule_queries() -> None:
        _report_queries(path)

    mule(1)(mule_queries)


#: The spooler task (a ``uwsgidecorators.spool`` object), when there is a spooler.
SPOOL_TASK: Any = None


def register_spooler() -> None:
    """With ``EXAMPLE_SPOOL_REPORT`` and a uWSGI spooler: a task that queries and reports."""
    global SPOOL_TASK
    path = os.environ.get("EXAMPLE_SPOOL_REPORT")
    if not path or not _in_uwsgi_with_master():
        return
    import uwsgi
    from uwsgidecorators import spool

    if "spooler" not in uwsgi.opt:
        return

    def spooled_queries(arguments: dict[str, Any]) -> None:
        _report_queries(path)

    SPOOL_TASK = spool(spooled_queries)
