"""forksafe: Django database connections that survive threads, fork and pre-forking servers.

The public surface is small on purpose; everything else lives in private modules.

* :func:`install` -- register the fork hooks and track every connection (call it early).
* :func:`prepare_fork` / :func:`after_fork_in_child` -- the two halves of the
  hooks, for code that forks without Python's ``os.register_at_fork`` (uWSGI).
* :class:`ForkSafeWarning` -- emitted when something is left as it is on purpose.
"""

from __future__ import annotations

from forksafe._fork import ForkSafeWarning, after_fork_in_child, install, prepare_fork

__version__ = "0.1.0.dev0"

__all__ = [
    "ForkSafeWarning",
    "__version__",
    "after_fork_in_child",
    "install",
    "prepare_fork",
]
