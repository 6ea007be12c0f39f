"""forksafe._sessions: what the server says about sessions, checked against real clients."""

from __future__ import annotations

from django.db import connections

from forksafe._sessions import (
    abandoned_sessions,
    backend_id,
    max_connections,
    quiet_sessions,
    settle_sessions,
)
from tests._abandoned import abandoned_after, settled_abandoned
from tests._forking import run_in_child


def _query_and_close() -> None:
    backend_id()
    connections.close_all()  # says goodbye (Terminate / COM_QUIT)


def _query_and_vanish() -> None:
    backend_id()  # run_in_child ends the child with os._exit: no goodbye


def test_abandoned_sessions_counts_a_client_that_vanishes_but_not_one_that_closes(
    db: None, vendor: str
) -> None:
    if vendor == "sqlite":
        assert abandoned_sessions() is None
        return
    connections.close_all()  # install() closes it before each fork anyway
    baseline = quiet_sessions()
    before = settled_abandoned()
    run_in_child(_query_and_close, timeout=30)
    assert settle_sessions(baseline, timeout=10) == baseline
    assert settled_abandoned() == before
    # Control: the same child without its goodbye is counted.
    run_in_child(_query_and_vanish, timeout=30)
    assert settle_sessions(baseline, timeout=10) == baseline
    assert abandoned_after(before) == before + 1


def test_max_connections_is_the_servers_setting(db: None, vendor: str) -> None:
    n = max_connections()
    if vendor == "sqlite":
        assert n is None
    else:
        assert n is not None and n > 1
