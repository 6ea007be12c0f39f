"""What the child reset costs and keeps: one ``/dev/null``, no scan, nothing freed; ``freeze_gc``.

The reset runs in every forked child before its own code, so it writes as
little as it can (each page it writes is a copy-on-write fault): the inherited
driver objects are detached (socket pointed at ``/dev/null``) and kept, never
closed nor freed. These tests hold it to that, and check with the server's own
counters that a kept object never says goodbye on the parent's session.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

import forksafe
from forksafe import _drivers, _sessions
from tests.harness.forking import run_in_child
from tests.harness.sessions import settled_abandoned

pytestmark = pytest.mark.usefixtures("db")

ALIASES = ("default", "other")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_open() -> Iterator[None]:
    """Fork with the parent's connections left open (close_before_fork=False)."""
    forksafe.install(close_before_fork=False)
    yield
    forksafe.install(close_before_fork=True)


@pytest.fixture
def server(vendor: str) -> None:
    if vendor == "sqlite":
        pytest.skip("SQLite has no socket to detach and no server to count sessions")


def _parent_sockets() -> list[int]:
    """The socket descriptor of each alias's raw connection, connecting if needed."""
    fds = []
    for alias in ALIASES:
        _sessions.backend_id(alias)
        raw = connections[alias].connection
        fd = _drivers._socket_fd(raw, _drivers.driver_of(raw))
        assert fd is not None
        fds.append(fd)
    return fds


def test_the_child_opens_dev_null_once_and_points_every_inherited_socket_at_it(
    keep_open: None, server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fds = _parent_sockets()
    opened: list[Any] = []
    real_open: Callable[..., int] = os.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)

    def child() -> tuple[list[str], list[str]]:
        return list(opened), [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]

    opens, targets = run_in_child(child)
    assert opens == [os.devnull]
    assert targets == [os.devnull] * len(fds)
    # The parent's sockets are untouched.
    assert all(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in fds)


def test_the_child_keeps_the_inherited_driver_objects_and_scans_nothing(
    keep_open: None, server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _parent_sockets()
    refs = [weakref.ref(connections[alias].connection) for alias in ALIASES]
    scans: list[int] = []
    real_get_objects = gc.get_objects

    def counting_get_objects(*args: Any, **kwargs: Any) -> list[Any]:
        scans.append(1)
        return real_get_objects(*args, **kwargs)

    monkeypatch.setattr(gc, "get_objects", counting_get_objects)

    def child() -> tuple[int, list[bool], list[bool]]:
        # The fork hook ran before this; the rest of the reset runs before the first use
        # of a connection (here: the public entry point).
        forksafe.after_fork_in_child()
        scanned = len(scans)
        forgotten = [connections[alias].connection is None for alias in ALIASES]
        gc.collect()
        return scanned, forgotten, [ref() is not None for ref in refs]

    scanned, forgotten, alive = run_in_child(child)
    assert scanned == 0
    assert forgotten == [True, True]  # the wrappers dropped them...
    assert alive == [True, True]  # ...and the reset kept them: never freed in the child


@pytest.mark.parametrize("mode", ["forksafe", "plain"])
def test_a_child_ending_with_interpreter_finalization_never_says_goodbye_for_the_parent(
    db_url: str, driver: str, server: None, mode: str
) -> None:
    """Server counters: the parent's sessions survive and no session is abandoned.

    The control (plain Django, mysqlclient) shows the bug: the inherited connection's
    deallocation at the child's exit sends ``COM_QUIT`` over the parent's socket.
    """
    if mode == "plain" and driver != "mysqlclient":
        pytest.skip("the control: only mysqlclient says goodbye when a child deallocates it")
    connections.close_all()
    before = settled_abandoned()
    out = subprocess.run(
        [sys.executable, "-m", "tests.harness.programs.finalizing_child", db_url, mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == "plain":
        assert "error" in report, report  # the parent's session was ended by the child
        return
    assert report.get("error") is None, out.stderr
    assert report["after"] == report["before"]
    assert settled_abandoned() == before


@pytest.fixture
def freeze_gc() -> Iterator[None]:
    forksafe.install(close_before_fork=False, freeze_gc=True)
    yield
    forksafe.install(close_before_fork=True, freeze_gc=False)
    gc.unfreeze()


def test_freeze_gc_freezes_in_the_parent_before_the_fork_and_children_work(
    freeze_gc: None,
) -> None:
    parent_backend = _sessions.backend_id()
    gc.unfreeze()
    made_before_fork: list[list[int]] = [[] for _ in range(100)]  # tracked objects, young

    def child() -> tuple[int, int, int]:
        frozen = gc.get_freeze_count()
        gc.collect()
        return frozen, _sessions.backend_id(), len(made_before_fork)

    frozen_in_child, child_backend, _ = run_in_child(child)
    # Frozen in the parent, before the fork (the child inherited the frozen set)...
    assert gc.get_freeze_count() >= len(made_before_fork)
    assert frozen_in_child >= len(made_before_fork)
    # ...and the child works on a session of its own.
    assert child_backend != parent_backend
    assert _sessions.backend_id() == parent_backend


def test_freeze_gc_is_off_by_default_and_takes_only_booleans() -> None:
    gc.unfreeze()
    run_in_child(lambda: None)
    assert gc.get_freeze_count() == 0
    with pytest.raises(TypeError, match="freeze_gc"):
        forksafe.install(freeze_gc="yes")  # type: ignore[arg-type]
