"""Run a function in a real forked child and bring its result (or failure) back.

The child always ends with ``os._exit`` so it can never fall back into
pytest's own stack. Its return value is pickled through a pipe; an exception
in the child is re-raised in the parent as :class:`ChildFailed` with the
child's traceback, so a failure inside a child fails the test. Every wait has a
deadline: a child that outlives it is killed and the test fails, saying so.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds a child may take unless the test says otherwise.
CHILD_TIMEOUT = 60.0


class ChildFailed(AssertionError):
    """The forked child raised (its traceback is the message), hung, or died without a report."""


def wait_child(pid: int, timeout: float = CHILD_TIMEOUT) -> int:
    """Wait for child ``pid``; return its exit code. Past ``timeout``: killed, ChildFailed."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            _kill_hung(pid)
            raise ChildFailed(f"the child {pid} was still running after {timeout} s: killed")
        time.sleep(0.01)


def _kill_hung(pid: int) -> None:
    """Kill a hung child, after asking it for its threads' Python stacks.

    pytest enables :mod:`faulthandler` for ``SIGABRT`` (writing to the original stderr), and
    the child inherits it: the stacks show where it hung. ``SIGKILL`` if it outlives that.
    """
    os.kill(pid, signal.SIGABRT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def fork_child(body: Callable[[], int], timeout: float = CHILD_TIMEOUT) -> int:
    """Fork; the child runs ``body()`` and exits with what it returns (2 if it raised).

    Return the child's exit code (see :func:`wait_child` for the deadline).
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 2
        try:
            code = body()
        finally:
            os._exit(code)
    return wait_child(pid, timeout)


def _read_all(fd: int, pid: int, deadline: float, timeout: float) -> bytes:
    """Everything the child writes to ``fd`` until it closes it, within the deadline."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            _kill_hung(pid)
            raise ChildFailed(f"the child {pid} did not report within {timeout} s: killed")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_in_child(
    func: Callable[[], T], timeout: float = CHILD_TIMEOUT, *, fork: Callable[[], int] = os.fork
) -> T:
    """Fork, call ``func()`` in the child, return what it returned.

    ``fork``: what forks (``os.fork``; the defence tests fork from C).

    A child still running after ``timeout`` seconds is killed (SIGKILL) and the
    test fails with :class:`ChildFailed`.
    """
    read_fd, write_fd = os.pipe()
    deadline = time.monotonic() + timeout
    pid = fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        code = 0
        try:
            payload: tuple[str, Any] = ("ok", func())
        except BaseException:
            payload = ("error", traceback.format_exc())
            code = 1
        try:
            data = pickle.dumps(payload)
        except Exception:
            data = pickle.dumps(("error", traceback.format_exc()))
            code = 1
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
        os._exit(code)
    os.close(write_fd)
    try:
        data = _read_all(read_fd, pid, deadline, timeout)
    finally:
        os.close(read_fd)
    code = wait_child(pid, max(deadline - time.monotonic(), 1.0))
    if not data:
        raise ChildFailed(f"the child died without a report (exit code {code})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise ChildFailed(f"the child raised:\n{value}")
    result: T = value
    return result
