"""A parent with two aliases connected forks a child that ends with interpreter finalization.

    python -m tests.harness.programs.finalizing_child URL plain|forksafe

Run as its own interpreter (``tests/test_child_reset.py``) so that the child
exits the way real programs do: ``sys.exit()``, module teardown, deallocation
of whatever is still alive -- where mysqlclient says ``COM_QUIT`` on whatever
socket its inherited connection holds. The child queries on a session of its
own and closes it cleanly first. The parent then checks that its sessions
survived, closes them cleanly and prints one JSON line: the backend ids before
and after the child, and the parent's error, if any.
"""

from __future__ import annotations

import json
import os
import sys

ALIASES = ("default", "other")


def main(url: str, mode: str) -> int:
    from django.conf import settings

    from forksafe import _sessions, _urls

    _, driver = _urls.split_url(url)
    _urls.select_driver(driver)
    db = _urls.database_settings(url)
    settings.configure(DATABASES={alias: dict(db) for alias in ALIASES}, USE_TZ=True)
    if mode == "forksafe":
        import forksafe

        forksafe.install(close_before_fork=False)
    import django

    django.setup()
    from django.db import connections

    before = {alias: _sessions.backend_id(alias) for alias in ALIASES}
    pid = os.fork()
    if pid == 0:
        try:
            for alias in ALIASES:
                _sessions.backend_id(alias)  # plain Django: on the parent's session
            connections.close_all()
        finally:
            sys.exit(0)  # interpreter finalization, in the child
    os.waitpid(pid, 0)
    report: dict[str, object] = {"before": before}
    try:
        report["after"] = {alias: _sessions.backend_id(alias) for alias in ALIASES}
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    connections.close_all()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
