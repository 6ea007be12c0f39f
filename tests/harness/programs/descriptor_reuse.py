"""Fork while another thread holds a connection; the child opens sessions, then collects garbage.

    python -m tests.harness.programs.descriptor_reuse MODE URL     (prints one JSON object)

``MODE``: ``forksafe`` (``install()`` before ``django.setup()``), ``plain`` (plain
Django), or ``close_fds`` (plain Django, and the child ``os.close()``s the inherited
descriptors first, as Celery's Django fixup does). The child opens two new sessions
*first* -- with ``close_fds`` they get the inherited descriptor numbers -- then drops
the inherited wrapper of its thread and runs ``gc.collect()``, then queries the new
sessions again. The parent and the other thread query after the child is gone.
Run by ``tests/test_descriptors.py`` in a fresh interpreter, so that plain is plain.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
from typing import Any

from tests.harness.forking import wait_child


def _answer(query: Any) -> int | str:
    """``query()``'s backend id, or the error it raised."""
    try:
        return int(query())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def main(mode: str, url: str) -> dict[str, Any]:
    from forksafe._sessions import backend_id
    from forksafe._urls import configure_django

    configure_django(url)
    if mode == "forksafe":
        import forksafe

        forksafe.install(close_before_fork=False)
    import django

    django.setup()
    from django.db import connections

    def session_of(conn: Any) -> int:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT pg_backend_pid()"
                if conn.vendor == "postgresql"
                else "SELECT CONNECTION_ID()"
            )
            row = cursor.fetchone()
        return int(row[0])

    out: dict[str, Any] = {"parent": backend_id()}
    inherited_fds = [connections["default"].connection.fileno()]
    ready, release = threading.Event(), threading.Event()

    def holder() -> None:
        out["thread"] = backend_id()
        inherited_fds.append(connections["default"].connection.fileno())
        ready.set()
        release.wait(60)
        out["thread_after"] = _answer(backend_id)
        connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    assert ready.wait(60)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        report: dict[str, Any] = {}
        try:
            if mode == "close_fds":
                for fd in inherited_fds:
                    os.close(fd)
            new = [connections.create_connection("default") for _ in range(2)]
            for conn in new:
                conn.ensure_connection()
            report["new"] = [session_of(conn) for conn in new]
            # The inherited wrapper of this thread becomes garbage (the other thread's
            # is unreachable already: that thread does not exist here).
            connections["default"] = new[0]
            gc.collect()
            report["new_after"] = [_answer(lambda c=conn: session_of(c)) for conn in new]
            for conn in new:
                conn.close()
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write_fd, json.dumps(report).encode())
        os._exit(0)
    os.close(write_fd)
    wait_child(pid)
    with os.fdopen(read_fd) as pipe:
        out["child"] = json.loads(pipe.read() or "{}")
    release.set()
    thread.join(60)
    out["parent_after"] = _answer(backend_id)
    connections.close_all()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
