"""gunicorn integration: server hooks for ``gunicorn.conf.py``.

gunicorn's arbiter forks its workers with :func:`os.fork`, so when the
application called :func:`forksafe.install` (with ``preload_app = True`` it
did so in the arbiter) the at-fork hooks already do the work. These hooks make
the same guarantee from the configuration file alone, for applications that do
not call ``install()``, and do no work twice when both are there: the child
reset does nothing in a process that was already reset.

.. code-block:: python

    # gunicorn.conf.py
    from forksafe.gunicorn import post_fork, pre_fork  # noqa: F401

    preload_app = True
    workers = 4
"""

from __future__ import annotations

import inspect
from typing import Any

from forksafe._fork import after_fork_in_child, prepare_fork

__all__ = ["post_fork", "pre_fork"]


# gunicorn checks a hook's arity with inspect.signature(); the hooks take
# *args to give a clear error when called wrongly, and show gunicorn this one.
_HOOK_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("server", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("worker", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ],
    return_annotation=None,
)


def _check_hook_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    signature = f"{name}(server, worker)"
    params = dict(zip(("server", "worker"), args, strict=False))
    if len(args) > 2 or set(kwargs) - {"server", "worker"} or set(params) & set(kwargs):
        raise TypeError(
            f"forksafe.gunicorn.{name} is gunicorn's `{signature}` server hook; it was"
            f" called with {len(args)} positional argument(s) and keywords {sorted(kwargs)}."
            f" Assign it in gunicorn.conf.py (`{name} = forksafe.gunicorn.{name}`), do"
            " not call it."
        )
    params.update(kwargs)
    missing = [p for p in ("server", "worker") if p not in params]
    if missing:
        raise TypeError(
            f"forksafe.gunicorn.{name} is gunicorn's `{signature}` server hook; missing"
            f" {', '.join(missing)}. Assign it in gunicorn.conf.py"
            f" (`{name} = forksafe.gunicorn.{name}`), do not call it."
        )
    worker = params["worker"]
    if not (hasattr(worker, "pid") and hasattr(worker, "age") and hasattr(worker, "log")):
        raise TypeError(
            f"forksafe.gunicorn.{name}: `worker` must be the gunicorn worker that the"
            f" `{signature}` hook receives, not {type(worker).__name__}"
        )


def pre_fork(*args: Any, **kwargs: Any) -> None:
    """gunicorn's ``pre_fork(server, worker)`` hook: runs in the arbiter before each fork.

    Closes the arbiter's idle connections in the forking thread (the arbiter
    serves no request; with ``preload_app = True`` it may have queried while
    loading), so it keeps no server session and the worker inherits nothing to
    detach (:func:`forksafe.prepare_fork`: never one with an open cursor; one
    inside ``transaction.atomic()`` stays open with a
    :class:`forksafe.ForkSafeWarning`).

    Raises ``TypeError`` (naming the hook signature) when not called the way
    gunicorn calls it.
    """
    _check_hook_args("pre_fork", args, kwargs)
    prepare_fork()  # also finds the connections opened before, without install()


def post_fork(*args: Any, **kwargs: Any) -> None:
    """gunicorn's ``post_fork(server, worker)`` hook: runs in the new worker after the fork.

    Detaches every connection the worker inherited from the arbiter, without
    network I/O (:func:`forksafe.after_fork_in_child`): the worker's first
    ORM call opens a session of its own, and the arbiter's session is never
    touched. With ``forksafe.install()`` in the application, its at-fork hook
    has already done that and this call does nothing. Works for the sync,
    gthread and other forked worker classes: the hook runs in the worker's
    main thread before it starts its request threads.

    Raises ``TypeError`` (naming the hook signature) when not called the way
    gunicorn calls it.
    """
    _check_hook_args("post_fork", args, kwargs)
    after_fork_in_child()


pre_fork.__signature__ = _HOOK_SIGNATURE  # type: ignore[attr-defined]
post_fork.__signature__ = _HOOK_SIGNATURE  # type: ignore[attr-defined]
