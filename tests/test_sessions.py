"""forksafe._sessions: what the server says about sessions, checked against real clients."""

from __future__ import annotations

from django.db import connections

from forksafe._sessions import (
    abandoned_sessions,
    backend_id,
    max_connections,
)
from tests.harness.forking import run_in_child
from tests.harness.sessions import abandoned_after, settled_abandoned, wait_sessions_gone


def _query_and_close() -> int:
    backend = backend_id()
    connections.close_all()  # says goodbye (Terminate / COM_QUIT)
    return backend


def _query_and_vanish() -> int:
    return backend_id()  # run_in_child ends the child with os._exit: no goodbye


def test_abandoned_sessions_counts_a_client_that_vanishes_but_not_one_that_closes(
    db: None, vendor: str
) -> None:
    if vendor == "sqlite":
        assert abandoned_sessions() is None
        return
    connections.close_all()  # the child would share this session otherwise
    before = settled_abandoned()
    # By session id, not by count: sessions of earlier tests may still be ending.
    wait_sessions_gone({run_in_child(_query_and_close, timeout=30)})
    assert settled_abandoned() == before
    # Control: the same child without its goodbye is counted.
    wait_sessions_gone({run_in_child(_query_and_vanish, timeout=30)})
    assert abandoned_after(before) == before + 1


def test_max_connections_is_the_servers_setting(db: None, vendor: str) -> None:
    n = max_connections()
    if vendor == "sqlite":
        assert n is None
    else:
        assert n is not None and n > 1
