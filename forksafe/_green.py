"""Greenlets under gevent: each greenlet's connections are closed when it ends, in that greenlet.

After gevent's monkey-patching, ``threading.local`` is per greenlet, so Django
keeps one connection per greenlet and alias (gunicorn's gevent worker: one per
client connection; Celery's gevent pool: one per task), and nothing closes it:
gevent drops a dead greenlet's locals when the greenlet object is freed, in
the hub, where blocking I/O is not allowed (so forksafe's thread guard, which
lives in a ``threading.local``, cannot close there either).

What closes them here: at a greenlet's first connection, a thread guard
(``forksafe._thread_guard.Guard``, keyed by the greenlet's ident) is stored in
that :class:`gevent.Greenlet`'s ``kwargs`` dict. The greenlet already unpacked
its ``kwargs`` when it started its function; when the function returns, raises
or is killed, ``Greenlet.run`` clears ``kwargs`` in the ending greenlet itself,
so the guard's ``__del__`` runs there, where a goodbye to the server may switch
to the hub and back. Only that greenlet's connections are closed: another
greenlet's are never touched (Django's wrappers record their owning greenlet).

gevent tells forksafe of the patch through its ``did_patch_all`` plugin entry
point (``forksafe.gevent``, then :func:`did_patch_all`), and ``forksafe.install()``
notices a patch made before it. When Django's connection handler was created before
the patch (``preload_app``), its storage is a real thread's, shared by every greenlet:
it is replaced by a new, greenlet-local one (what it held was inherited from the
arbiter and is detached by the fork reset, or is closed).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from forksafe import _closing, _fork, _registry, _thread_guard

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "GUARD_KEY",
    "did_patch_all",
    "enable",
    "enabled",
    "patched",
    "request",
    "storage_is_green",
]

logger = logging.getLogger("forksafe")

GUARD_KEY = "__forksafe_connection_guard__"
_enabled = False
_requested = False  # forksafe.gevent.patch_all() is patching


def request() -> None:
    """Enable at gevent's coming patch (``forksafe.gevent.patch_all()``)."""
    global _requested
    _requested = True


def patched() -> bool:
    """Whether gevent has monkey-patched ``threading`` in this process."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:  # pragma: no cover - a gevent without the API
        return False


def storage_is_green() -> bool | None:
    """Whether Django's connections live in a greenlet-local storage; ``None``: no handler yet."""
    db = sys.modules.get("django.db")
    handler = getattr(db, "connections", None)
    local = getattr(handler, "_connections", None)
    storage = getattr(local, "_storage", None)
    if storage is None:
        return None
    return type(storage).__module__.startswith("gevent")


def _rehome_connections() -> bool:
    """Give Django's connection handler a greenlet-local storage if it has a thread's; say if so.

    The calling thread's connections in the old storage are closed first (a forked
    worker's were detached by the fork reset: nothing to close); one inside
    ``atomic`` is left open.
    """
    if storage_is_green() is not False:
        return False
    from asgiref.local import Local
    from django.db import connections

    for wrapper in _closing.handler_wrappers():
        if wrapper.connection is None or wrapper.in_atomic_block:
            continue  # detached by the fork reset; or in use by an atomic block: left alone
        # Its owner is this thread under its unpatched ident, which gevent's get_ident()
        # no longer returns: share it for the close.
        wrapper.inc_thread_sharing()
        try:
            wrapper.close()
        except Exception:
            logger.warning(
                "forksafe: closing %r before re-homing Django's connections failed",
                wrapper.alias,
                exc_info=True,
            )
        finally:
            wrapper.dec_thread_sharing()
    connections._connections = Local(connections.thread_critical)  # type: ignore[attr-defined]
    return True


def _on_connect(wrapper: BaseDatabaseWrapper) -> None:
    """The registry's connect hook under gevent, in the greenlet that connected."""
    from greenlet import getcurrent

    current: Any = getcurrent()
    kwargs = getattr(current, "kwargs", None)
    if type(kwargs) is not dict:  # a raw greenlet, the main one: the thread guard's rules
        if _thread_guard.enabled():
            _thread_guard.current_guard(create=True, connecting=wrapper)
        return
    guard = kwargs.get(GUARD_KEY)
    if isinstance(guard, _thread_guard.Guard) and guard.pid == os.getpid():
        return
    kwargs[GUARD_KEY] = _thread_guard.Guard(wrapper)


def enabled() -> bool:
    """Whether greenlets close their connections when they end (:func:`enable` ran)."""
    return _enabled


def enable() -> None:
    """Close each greenlet's connections when it ends; call after gevent's patch. Idempotent."""
    global _enabled
    if _rehome_connections():
        logger.info(
            "forksafe: gevent patched threading after Django created its connection"
            " handler; its connections are now per greenlet"
        )
    _registry.start_tracking()
    _registry.set_connect_hook(_on_connect)
    _enabled = True


def did_patch_all(event: object) -> bool:
    """After gevent's ``patch_all()``: enable if forksafe is in use; say whether it is enabled.

    gevent calls it (through ``forksafe.gevent``'s plugin entry point) in every
    process that patches; it does something only where forksafe is in use:
    ``forksafe.install()`` ran, ``forksafe.gunicorn`` (``gunicorn.conf.py``) is
    imported, or ``forksafe.gevent.patch_all()`` is patching.
    """
    in_use = _requested or _fork.hooks_installed() or "forksafe.gunicorn" in sys.modules
    if in_use and patched():
        enable()
    return _enabled
