"""``forksafe.install()``: switch everything on, in one call at start-up.

The one module that knows every integration: it imports the fork hooks
(``_fork``), the thread guard (``_thread_guard``), the uWSGI hook (``uwsgi``) and
the ASGI wiring (``asgi``); none of them imports it.
"""

from __future__ import annotations

# _exit: imported for the close-at-exit it gives the fork hooks (_fork.set_exit_hook).
from forksafe import _exit, _fork, _green, _guard, _registry, _thread_guard, asgi, uwsgi  # noqa: F401

__all__ = ["cover_asgi", "install"]

# Whether install(threads=...) was ever given: if not, ASGI switches the guard on.
_threads_chosen = False


def install(
    *,
    close_before_fork: bool | None = None,
    threads: bool | None = None,
    freeze_gc: bool | None = None,
) -> None:
    """Make every fork of this process safe for Django connections.

    Call it early -- at the top of ``manage.py``, ``wsgi.py``, ``asgi.py`` or the
    settings module, before anything connects. It reads no setting and evaluates
    no lazy object, so it may run before ``DJANGO_SETTINGS_MODULE`` is set or
    ``settings.configure()`` is called.
    The first call registers the at-fork hooks (:func:`os.register_at_fork`,
    and uWSGI's post-fork chain under uWSGI) and tracks every connection
    Django opens; later calls only change the options they name. An option
    left out keeps its current value.

    ``close_before_fork``: ``True`` runs the pre-fork cleanup of
    :func:`forksafe.prepare_fork` before every ``os.fork()`` too; left unset,
    only the pool and process wrappers run it; ``False``: they neither (docs:
    "What is closed before a fork"). The child is safe either way; the cleanup
    ends the session (and its locks, temporary tables, ``SET`` values) of every
    idle connection of the forking thread.

    Every Django connection also checks, before each use, that this process
    opened it: a fork that no hook saw (uWSGI without ``master``, ``fork()``
    from C, this call made after the fork) is caught there, its inherited
    connections detached and a WARNING logged (see ``forksafe._guard``).

    ``threads`` (default ``False``): close the connections of *every* thread
    when that thread ends, whoever started it; see ``forksafe.threads``.

    ``freeze_gc`` (default ``False``): :func:`gc.freeze` before each fork, in
    the parent, and first thing in each child (where the parent forks in C,
    as uWSGI's master does, that is the only one): the cyclic GC of the
    children never scans what they inherited, so its scans do not copy the
    shared pages. What is frozen is never collected afterwards, in the parent
    either: for a process that loads once and then forks its workers, not for
    one that keeps forking while it runs.
    """
    options = (
        ("close_before_fork", close_before_fork),
        ("threads", threads),
        ("freeze_gc", freeze_gc),
    )
    for name, value in options:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"install({name}=...) takes True or False, not {value!r}")
    if close_before_fork is not None:
        _fork.set_close_before_fork(close_before_fork)
    if freeze_gc is not None:
        _fork.set_freeze_gc(freeze_gc)
    _guard.install()
    _fork.reset_after_late_install()
    _registry.start_tracking()
    if threads is not None:
        global _threads_chosen
        _threads_chosen = True
        _thread_guard.close_at_thread_exit(threads)
    _fork.register_hooks()
    if _green.patched():
        _green.enable()
    uwsgi.install_if_under_uwsgi()
    if asgi.server_running():
        cover_asgi()


def cover_asgi() -> None:
    """Set Django's ASGI handler up for forksafe; idempotent.

    At the first request of each event loop, its default executor becomes a
    :class:`forksafe.ThreadPoolExecutor`; Django's handler answers the
    ``lifespan`` protocol (``forksafe.asgi``); and, unless ``install(threads=...)``
    chose otherwise, every thread closes its connections when it ends -- under
    ASGI, each request is a thread of its own. :func:`install` calls it when an
    ASGI server is running (its module imported), the ``forksafe`` app always.
    """
    asgi.connect_signals()
    asgi.answer_lifespan_in_django()
    asgi.call_at_first_request(_threads_unless_chosen)


def _threads_unless_chosen() -> None:
    if not _threads_chosen:
        install(threads=True)
