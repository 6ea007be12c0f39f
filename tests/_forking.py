"""Run a function in a real forked child and bring its result (or failure) back.

The child always ends with ``os._exit`` so it can never fall back into
pytest's own stack. Its return value is pickled through a pipe; an exception
in the child is re-raised in the parent as :class:`ChildFailed` with the
child's traceback, so a failure inside a child fails the test. A child that
has not reported within ``timeout`` seconds is killed and fails the test too.
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


class ChildFailed(AssertionError):
    """The forked child raised (its traceback is the message) or died without a report."""


def run_in_child(func: Callable[[], T], timeout: float = 60) -> T:
    """Fork, call ``func()`` in the child, return what it returned."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
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
    data = _read_until_eof(read_fd, pid, time.monotonic() + timeout, timeout)
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"the child died without a report (wait status {status})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise ChildFailed(f"the child raised:\n{value}")
    result: T = value
    return result


def _read_until_eof(fd: int, pid: int, deadline: float, timeout: float) -> bytes:
    """Everything the child writes to ``fd``; kill it and fail past ``deadline``."""
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ChildFailed(f"the child did not finish within {timeout} s (killed)")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)
