"""Run a function in a real forked child and bring its result (or failure) back.

The child always ends with ``os._exit`` so it can never fall back into
pytest's own stack. Its return value is pickled through a pipe; an exception
in the child is re-raised in the parent as :class:`ChildFailed` with the
child's traceback, so a failure inside a child fails the test.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ChildFailed(AssertionError):
    """The forked child raised (its traceback is the message) or died without a report."""


def run_in_child(func: Callable[[], T]) -> T:
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
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"the child died without a report (wait status {status})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise ChildFailed(f"the child raised:\n{value}")
    result: T = value
    return result
