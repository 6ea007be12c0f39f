"""Leak assertions for test suites: no server session or Django connection left behind.

::

    from forksafe.testing import assert_no_connection_leaks

    def test_report_job():
        with assert_no_connection_leaks():
            run_job_in_threads()

or, with pytest, the ``forksafe_no_leaks`` fixture (the plugin is registered
through the ``pytest11`` entry point when forksafe is installed)::

    @pytest.mark.usefixtures("forksafe_no_leaks")
    def test_report_job(): ...

What counts as a leak, checked when the block ends:

* a Django connection still open in *another thread* of this process that was
  opened during the block (threads that ended without closing theirs are
  included: their wrapper waits for the GC with its socket open);
* more server sessions on a database than before the block, beyond the
  connections the calling thread itself still holds (Django keeps one per
  thread on purpose). Sessions that end within ``timeout`` seconds are not
  leaks (a child that exited is gone once the server reads EOF). The message
  names the process that holds a leaked session's socket when it is a local
  process (Linux ``/proc``), e.g. a child that never exited.

The calling thread's own connections are not leaks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from forksafe import _registry, _sessions

__all__ = ["ConnectionLeak", "assert_no_connection_leaks"]


class ConnectionLeak(AssertionError):
    """A block left server sessions or Django connections behind."""


def _database_key(alias: str) -> tuple[Any, ...]:
    from django.db import connections

    s = connections.settings[alias]
    return (s["ENGINE"], s.get("HOST"), s.get("PORT"), s.get("NAME"))


def _socket_owner(port: int | None) -> int | None:
    """The local pid whose TCP socket has local ``port`` (Linux /proc), if any."""
    if port is None:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rpartition(":")[2], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def _own_open_connections() -> dict[str, int]:
    """Connections this thread (of this process) holds, by alias."""
    pid, me = os.getpid(), threading.get_ident()
    counts: dict[str, int] = {}
    for entry in _registry.entries():
        wrapper = entry.wrapper
        mine = entry.pid == pid and entry.thread_id == me
        if mine and wrapper is not None and wrapper.connection is entry.raw:
            counts[entry.alias] = counts.get(entry.alias, 0) + 1
    return counts


def _other_threads_connections() -> dict[int, _registry.Entry]:
    pid, me = os.getpid(), threading.get_ident()
    found = {}
    for entry in _registry.entries():
        wrapper = entry.wrapper
        if entry.pid != pid or entry.thread_id == me or wrapper is None:
            continue
        if wrapper.connection is entry.raw:
            found[id(entry)] = entry
    return found


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return f"thread {thread.name!r} (ident {ident}, still running)"
    return f"thread ident {ident} (ended without closing it)"


@contextmanager
def assert_no_connection_leaks(
    using: list[str] | None = None, *, timeout: float = 2.0
) -> Iterator[None]:
    """Fail with :class:`ConnectionLeak` if the block leaves connections or sessions behind.

    ``using``: the aliases to watch (default: every configured database).
    ``timeout``: how long to wait for sessions of exited processes to end.
    Runs in the calling thread; needs Django to be set up.
    """
    from django.db import connections

    _registry.start_tracking()
    aliases = list(using) if using is not None else list(connections.settings)
    unknown = [a for a in aliases if a not in connections.settings]
    if unknown:
        raise ValueError(
            f"unknown database alias(es) {unknown}; configured: {list(connections.settings)}"
        )
    # One server count per database, through its first alias.
    databases: dict[tuple[Any, ...], list[str]] = {}
    for alias in aliases:
        databases.setdefault(_database_key(alias), []).append(alias)
    before_sessions = {key: _sessions.list_sessions(group[0]) for key, group in databases.items()}
    before_threads = _other_threads_connections()
    before_own = _own_open_connections()

    yield

    problems: list[str] = []
    for entry_id, entry in _other_threads_connections().items():
        if entry_id not in before_threads and entry.alias in aliases:
            problems.append(
                f"alias {entry.alias!r}: a connection left open in"
                f" {_thread_name(entry.thread_id)} (pid {entry.pid})"
            )
    own = _own_open_connections()
    for key, group in databases.items():
        before = before_sessions[key]
        if before is None:
            continue
        # Compared by session id, so that sessions of earlier work that end during
        # the block cannot hide new ones.
        before_ids = {session.id for session in before}
        allowed = max(sum(own.get(a, 0) - before_own.get(a, 0) for a in group), 0)
        deadline = time.monotonic() + timeout
        while True:
            after = _sessions.list_sessions(group[0]) or []
            new = [session for session in after if session.id not in before_ids]
            if len(new) <= allowed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        extra = len(new) - allowed
        if extra > 0:
            owners = []
            for session in new:
                owner = _socket_owner(session.port)
                if owner is None:
                    where = "client not on this machine or gone"
                elif owner == os.getpid():
                    where = f"held by this process, pid {owner}"
                else:
                    where = f"held by pid {owner}"
                owners.append(f"session {session.id} ({where})")
            problems.append(
                f"alias {group[0]!r}: {extra} server session(s) more than before:"
                f" {', '.join(owners)}"
            )
    if problems:
        raise ConnectionLeak("connection leak: " + "; ".join(problems))
