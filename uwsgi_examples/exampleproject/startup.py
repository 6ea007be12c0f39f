"""What the process that loads the application does, and optional hooks of "user" code.

Environment variables (all optional):

* ``EXAMPLE_FORKSAFE``: ``1`` (default) calls ``forksafe.install()``; ``0`` runs plain
  Django (the control); ``hook`` leaves it to the server hooks alone (gunicorn.conf.py).
* ``EXAMPLE_USER_HOOK``: ``decorator-before`` / ``decorator-after`` register a
  ``@uwsgidecorators.postfork`` hook that queries the database, before / after
  ``forksafe.install()``; ``raw-before`` assigns ``uwsgi.post_fork_hook`` by hand first.
* ``EXAMPLE_MULE_REPORT``: a file path; mule 1 runs ORM queries and writes what it saw there.
* ``EXAMPLE_SPOOL_REPORT``: the same for a spooler task (``GET /spool`` enqueues it).
"""

from __future__ import annotations

import json
import os
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
    if os.environ.get("EXAMPLE_FORKSAFE", "1") == "1":
        import forksafe

        forksafe.install()


def touch_database() -> None:
    """Query while loading, as many applications do (warm caches, check the schema...)."""
    from django.contrib.contenttypes.models import ContentType

    from forksafe._sessions import backend_id

    STATE["loader_pid"] = os.getpid()
    STATE["loader_backend"] = backend_id()
    STATE["contenttypes"] = ContentType.objects.count()


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
