"""Descriptor reuse: fork while another thread holds a connection, then the child's GC runs.

In the child the other thread's connection is garbage, and so is any inherited
wrapper the child replaces. When the garbage collector frees them, the driver's
clean-up writes its goodbye to the descriptor *number* it remembers -- the
parent's socket, or, if the descriptor was closed by number (Celery's fixup
does that), whatever new socket got that number since: the child's own new
session. forksafe points the inherited descriptors at ``/dev/null`` and keeps
their numbers taken, so the child's new sessions, the parent's session and the
other thread's session all keep answering.

Each mode runs in a fresh interpreter (``tests/harness/programs/descriptor_reuse.py``): plain
Django must really be plain.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.scripts import run_python

DRIVERS = ("psycopg2", "mysqlclient")
# psycopg2 frees a connection without a word in a process other than the one that opened
# it (CONN_CHECK_PID in its connection_dealloc): plain Django shows nothing to control there.
NO_CONTROL = "psycopg2 sends and closes nothing when it frees a forked child's inherited connection"


@pytest.fixture
def descriptors_run(db_url: str, driver: str) -> Any:
    if driver not in DRIVERS:
        pytest.skip(
            "descriptor reuse matters for drivers that close a socket by its number when"
            f" the wrapper is freed: {', '.join(DRIVERS)}"
        )

    def run(mode: str) -> dict[str, Any]:
        result: dict[str, Any] = run_python(
            "-m", "tests.harness.programs.descriptor_reuse", mode, db_url
        )
        return result

    return run


def test_child_gc_after_new_sessions_leaves_every_session_answering(descriptors_run: Any) -> None:
    res = descriptors_run("forksafe")
    child = res["child"]
    assert "error" not in child, res
    assert child["new_after"] == child["new"], res  # the child's own sessions answer
    assert len(set(child["new"]) | {res["parent"], res["thread"]}) == 4, res
    assert res["parent_after"] == res["parent"], res
    assert res["thread_after"] == res["thread"], res


@pytest.mark.parametrize("mode", ["plain", "close_fds"])
def test_control_without_forksafe_the_childs_gc_ends_sessions(
    descriptors_run: Any, driver: str, mode: str
) -> None:
    """``plain``: the goodbyes reach the parent's and the other thread's sessions.
    ``close_fds`` (Celery's fixup: ``os.close(fd)``): the new sockets got those numbers,
    so the goodbyes end the child's own new sessions instead."""
    if driver != "mysqlclient":
        pytest.skip(NO_CONTROL)
    res = descriptors_run(mode)
    child = res["child"]
    if mode == "plain":
        assert res["parent_after"] != res["parent"], res
        assert res["thread_after"] != res["thread"], res
    else:
        assert child["new_after"] != child["new"], res
        assert any(isinstance(answer, str) for answer in child["new_after"]), res
