"""Async Django (ASGI): the event loop's executor threads, and a goodbye at server shutdown.

Under ASGI, Django runs code that touches the database in two kinds of threads:

* a new thread per request -- Django's ASGI handler gives each request its own
  thread-sensitive executor (sync views, middleware, ``sync_to_async()``);
  that thread ends with the request. ``FORKSAFE["THREADS"]`` /
  ``forksafe.install(threads=True)`` closes its connections when it ends;
* the event loop's *default executor* -- ``sync_to_async(thread_sensitive=False)``
  and ``asyncio.to_thread()``: a :class:`concurrent.futures.ThreadPoolExecutor`
  whose threads live as long as the loop. Django's request rules
  (``close_old_connections``, ``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``) run in
  the request's thread, never in these: their connections go stale and stay
  open until the process ends.

:func:`install_default_executor` makes the running loop's default executor a
:class:`forksafe.ThreadPoolExecutor`: its workers apply Django's rules around
every task and close their connections when they exit -- when the loop shuts
the executor down (``asyncio.run()``, which uvicorn uses, does) or when
:func:`shutdown` runs. The ``forksafe`` Django app calls it at the first ASGI
request of each event loop (a receiver of ``request_started`` sent by
:class:`django.core.handlers.asgi.ASGIHandler`), so nothing is needed in
``asgi.py`` for that.

:class:`LifespanMiddleware` answers the ASGI ``lifespan`` protocol (Django's
handler does not): startup installs the executor, shutdown runs
:func:`shutdown` -- the executor's workers close their connections and native
pools are closed, *before* the server's process ends. Servers that end their
workers with a signal right after the lifespan shutdown (gunicorn's uvicorn
workers: uvicorn re-raises ``SIGTERM`` with gunicorn's default handler) give no
other chance to say goodbye.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent import futures
from typing import Any

from forksafe import _exit
from forksafe.threads import ThreadPoolExecutor

__all__ = [
    "ASGI_SERVERS",
    "LifespanMiddleware",
    "answer_lifespan_in_django",
    "call_at_first_request",
    "connect_signals",
    "cover_event_loops",
    "cover_sync_to_async",
    "install_default_executor",
    "server_running",
    "serving",
    "shutdown",
]

logger = logging.getLogger("forksafe")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The executor installed on each loop (a loop is never ours to keep alive).
_executors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadPoolExecutor] = (
    weakref.WeakKeyDictionary()
)


def _running_loop(caller: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"forksafe.asgi.{caller}() needs the running event loop: call it from async code"
            " in the server's loop (an ASGI lifespan startup, an async view), or use"
            " forksafe.asgi.LifespanMiddleware"
            + (", or pass the loop: loop=..." if caller == "install_default_executor" else "")
        ) from None


def install_default_executor(
    max_workers: int | None = None, *, loop: asyncio.AbstractEventLoop | None = None
) -> ThreadPoolExecutor:
    """Make an event loop's default executor a :class:`forksafe.ThreadPoolExecutor`.

    ``loop``: the loop (running or not, e.g. one made with
    :func:`asyncio.new_event_loop`); by default the running loop, so call it from
    async code then. Returns the executor. Calling it again on the same loop
    returns the executor already installed (``max_workers`` is then ignored).
    ``max_workers`` defaults to that of the executor it replaces, else to the
    standard default. The replaced executor is shut down without waiting: its
    threads finish the tasks they have and exit. Raises ``RuntimeError``
    outside a running loop when no ``loop`` is given, or for a closed loop.
    """
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise ValueError(f"max_workers must be a whole number >= 1 or None, not {max_workers!r}")
    if loop is None:
        loop = _running_loop("install_default_executor")
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an asyncio event loop, not {loop!r}")
    elif loop.is_closed():
        raise RuntimeError(f"forksafe.asgi.install_default_executor(): {loop!r} is closed")
    installed = _executors.get(loop)
    if installed is not None:
        return installed
    # asyncio keeps the executor it made (or was given) in this private attribute
    # (CPython's BaseEventLoop); other loops simply get the standard default size.
    old = getattr(loop, "_default_executor", None)
    if max_workers is None and isinstance(old, futures.ThreadPoolExecutor):
        max_workers = getattr(old, "_max_workers", None)
    executor = ThreadPoolExecutor(max_workers, thread_name_prefix="forksafe-asyncio")
    loop.set_default_executor(executor)
    _executors[loop] = executor
    if isinstance(old, futures.Executor) and old is not executor:
        old.shutdown(wait=False)
    return executor


def cover_event_loops() -> None:
    """Give every asyncio loop forksafe's default executor the first time it needs one. Idempotent.

    Wraps :meth:`asyncio.BaseEventLoop.run_in_executor` (every loop of the
    standard library): ``run_in_executor(None, ...)`` -- what
    :func:`asyncio.to_thread`, ``sync_to_async(thread_sensitive=False)`` and
    :meth:`~asyncio.loop.getaddrinfo` call -- on a loop that has no default
    executor yet gets :func:`install_default_executor` first. A loop given one
    with :meth:`~asyncio.loop.set_default_executor` keeps it. Workers built on
    ``asyncio.run()`` (management commands, procrastinate, Temporal) then run
    sync code in threads that apply Django's rules after every task and close
    their connections when the loop ends (``asyncio.run()`` shuts the executor
    down). Loops of other implementations (uvloop) are not covered: call
    :func:`install_default_executor` in them. The ``forksafe`` app calls it in
    ``ready()``.
    """
    current = asyncio.BaseEventLoop.run_in_executor
    if hasattr(current, "__forksafe_original__"):
        return

    def run_in_executor(
        self: asyncio.BaseEventLoop, executor: Any, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        if (
            executor is None
            and getattr(self, "_default_executor", True) is None
            and not getattr(self, "_executor_shutdown_called", False)
            and not self.is_closed()
        ):
            install_default_executor(loop=self)
        return current(self, executor, func, *args)

    run_in_executor.__qualname__ = current.__qualname__
    run_in_executor.__doc__ = current.__doc__
    run_in_executor.__forksafe_original__ = current  # type: ignore[attr-defined]
    asyncio.BaseEventLoop.run_in_executor = run_in_executor  # type: ignore[method-assign,assignment]


def cover_sync_to_async() -> ThreadPoolExecutor | None:
    """Make asgiref's single-thread executor a :class:`forksafe.ThreadPoolExecutor`. Idempotent.

    ``sync_to_async()`` (thread-sensitive, the default) outside a request --
    under ``asyncio.run()``, in a management command or a worker -- runs code
    in ``SyncToAsync.single_thread_executor``, one thread for the life of the
    process that never applies Django's rules. Replaced by a one-thread
    forksafe executor, that thread applies them after every call (as Django
    does after a request: ``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``) and closes
    its connections when it ends (at interpreter exit, or when the executor
    is shut down). Returns the executor; ``None`` without asgiref. A
    replaced executor is shut down without waiting. The ``forksafe`` app
    calls it in ``ready()``.
    """
    try:
        from asgiref.sync import SyncToAsync
    except ImportError:  # pragma: no cover - Django requires asgiref
        return None
    current = SyncToAsync.single_thread_executor
    if isinstance(current, ThreadPoolExecutor) and not getattr(current, "_shutdown", False):
        return current
    executor = ThreadPoolExecutor(1, thread_name_prefix="forksafe-sync-to-async")
    SyncToAsync.single_thread_executor = executor
    if isinstance(current, futures.Executor):
        current.shutdown(wait=False)
    return executor


def _goodbye(executor: ThreadPoolExecutor | None, pools: bool) -> None:
    """In a thread of its own: wait for the executor's workers to close, then the pools."""
    if executor is not None:
        executor.shutdown(wait=True)
    if pools:
        _exit.close_native_pools()


async def shutdown(*, pools: bool = True) -> None:
    """Close the running loop's connections and its forksafe executor's; close native pools.

    Closes what the loop's own thread opened (the application queried while
    loading), then shuts down the executor :func:`install_default_executor` installed on this
    loop, waiting (without blocking the loop) until each worker has closed its
    connections in its own thread; then, with ``pools``, closes Django's native
    connection pools of this process. For the end of a server's life (an ASGI
    lifespan shutdown): the loop's default executor accepts no more work after.
    """
    loop = _running_loop("shutdown")
    _exit.close_loop_thread_connections()
    executor = _executors.get(loop)
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            _goodbye(executor, pools)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, done, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    # Not the loop's default executor: that is what is being shut down.
    threading.Thread(target=run, name="forksafe-asgi-shutdown", daemon=True).start()
    await done


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class LifespanMiddleware:
    """Wrap an ASGI application: answer ``lifespan`` events with forksafe's start-up and shutdown.

    ``application = LifespanMiddleware(get_asgi_application())``. Startup runs
    :func:`install_default_executor`, shutdown :func:`shutdown`; every other
    scope goes to the wrapped application. The wrapped application never sees
    ``lifespan`` (Django's handler rejects it).
    """

    def __init__(self, app: ASGIApp) -> None:
        if not callable(app):
            raise TypeError(
                f"LifespanMiddleware wraps an ASGI application (a callable), not {app!r}"
            )
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await _answer_lifespan(receive, send)


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    """Serve one ``lifespan`` scope: :func:`install_default_executor`, then :func:`shutdown`."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                install_default_executor()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            except Exception as exc:
                logger.warning("forksafe: closing connections at shutdown failed", exc_info=True)
                await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.shutdown.complete"})
            return


def answer_lifespan_in_django() -> None:
    """Make Django's ``ASGIHandler`` answer ``lifespan`` as :class:`LifespanMiddleware` does, once.

    Called by the ``forksafe`` app's ``ready()``, so that ``get_asgi_application()``
    alone says goodbye at shutdown. Django's handler rejects the ``lifespan`` scope
    (``ValueError``; uvicorn then logs "ASGI 'lifespan' protocol appears unsupported"
    and carries on), so no server relied on it. Why it matters: uvicorn stopped with
    ``SIGTERM`` (systemd, Docker, Kubernetes, gunicorn's uvicorn workers) re-raises the
    signal with its previous handler once its own shutdown -- the lifespan shutdown
    included -- is done, inside ``asyncio.run()`` and before the loop's executor is
    shut down (https://github.com/encode/uvicorn/blob/0.30.0/uvicorn/server.py,
    ``capture_signals``): without the lifespan shutdown, the default executor's
    threads never close their sessions. Every other scope goes to Django unchanged.
    """
    from django.core.handlers.asgi import ASGIHandler

    current = ASGIHandler.__dict__["__call__"]
    if hasattr(current, "__forksafe_original__"):
        return

    async def __call__(self: ASGIHandler, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        await current(self, scope, receive, send)

    __call__.__qualname__ = current.__qualname__
    __call__.__doc__ = current.__doc__
    __call__.__forksafe_original__ = current  # type: ignore[attr-defined]
    ASGIHandler.__call__ = __call__  # type: ignore[method-assign,assignment]


#: ASGI servers whose module in ``sys.modules`` means this process serves ASGI.
ASGI_SERVERS = ("uvicorn", "daphne", "hypercorn", "granian")


def server_running() -> bool:
    """Whether this process looks like an ASGI server.

    One of :data:`ASGI_SERVERS` is imported, or Django's ASGI handler.
    """
    modules = sys.modules
    return "django.core.handlers.asgi" in modules or any(name in modules for name in ASGI_SERVERS)


_served = False  # this process has served an ASGI request
# Called once, at this process's first ASGI request: what the layers above add there.
_first_request_callbacks: list[Callable[[], None]] = []


def serving() -> bool:
    """Whether this process has served a request through Django's ASGI handler."""
    return _served


def call_at_first_request(callback: Callable[[], None]) -> None:
    """Call ``callback()`` at this process's first ASGI request (once per callback).

    In the server's event loop, before the request is handled: the ``forksafe``
    app uses it for what only applies under ASGI (the ``THREADS`` default, W005).
    """
    if not callable(callback):
        # Checked here: called at the first request, it would fail far from this line.
        raise TypeError(f"call_at_first_request() takes a function, not {callback!r}")
    if callback not in _first_request_callbacks:
        _first_request_callbacks.append(callback)


def _first_request() -> None:
    global _served
    if _served:
        return
    _served = True
    for callback in _first_request_callbacks:
        callback()


async def _on_request_started(sender: object, **kwargs: object) -> None:
    """``request_started`` receiver for Django's ASGI handler, in the server's loop.

    Per request, once set up: a flag and a dictionary lookup.
    """
    if not _served:
        _first_request()
    if asyncio.get_running_loop() not in _executors:
        install_default_executor()


def connect_signals() -> None:
    """Set forksafe up at the first ASGI request of each loop (``AppConfig.ready()``)."""
    from django.core.handlers.asgi import ASGIHandler
    from django.core.signals import request_started

    # sender=ASGIHandler: WSGI's synchronous request_started never calls this
    # coroutine (Django would start an event loop per request for it).
    request_started.connect(_on_request_started, sender=ASGIHandler, dispatch_uid="forksafe.asgi")
