"""The example's views: ORM queries, and which process, thread and server session ran them.

``/`` is a sync view (WSGI, or ASGI's per-request thread); under ASGI ``/async`` runs the
same queries from an async view through ``sync_to_async`` (thread-sensitive: the request's
own thread), ``/async-unsafe`` through ``sync_to_async(thread_sensitive=False)`` (the event
loop's default executor, shared by every request) and ``/to-thread`` through
``asyncio.to_thread`` (the same executor).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.http import HttpRequest, JsonResponse
from exampleproject import startup
from exampleproject.startup import STATE

from forksafe._sessions import backend_id

_FROZEN: dict[int, int] = {}


def _frozen_at_first_request() -> int:
    """``gc.get_freeze_count()`` of this process, counted once: it walks every frozen object."""
    pid = os.getpid()
    if pid not in _FROZEN:
        _FROZEN[pid] = gc.get_freeze_count()
    return _FROZEN[pid]


def _queries() -> dict[str, Any]:
    """Run a few ORM queries; the pid, thread, the session's backend id and the loader's."""
    try:
        import uwsgi

        worker = int(uwsgi.worker_id())
    except ImportError:
        worker = 0
    backend = backend_id()
    count = ContentType.objects.filter(app_label__in=["auth", "contenttypes"]).count()
    groups = list(Group.objects.values_list("name", flat=True)[:5])
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "worker": worker,
        "vendor": connection.vendor,
        "backend": backend,
        "backend_after": backend_id(),
        "count": count,
        "groups": groups,
        "loader_pid": STATE.get("loader_pid"),
        "loader_backend": STATE.get("loader_backend"),
        "postfork_pid": STATE.get("postfork_pid"),
        "postfork_backend": STATE.get("postfork_backend"),
        "frozen": _frozen_at_first_request(),
    }


def whoami(request: HttpRequest) -> JsonResponse:
    """A sync view: the queries run in the thread that serves the request."""
    return JsonResponse(_queries())


async def whoami_async(request: HttpRequest) -> JsonResponse:
    """An async view: the queries run in the request's thread (``sync_to_async``)."""
    return JsonResponse(await sync_to_async(_queries)())


async def whoami_async_unsafe(request: HttpRequest) -> JsonResponse:
    """The queries run in the loop's default executor (``thread_sensitive=False``)."""
    return JsonResponse(await sync_to_async(_queries, thread_sensitive=False)())


async def whoami_to_thread(request: HttpRequest) -> JsonResponse:
    """The queries run in the loop's default executor (``asyncio.to_thread``)."""
    return JsonResponse(await asyncio.to_thread(_queries))


def enqueue(request: HttpRequest) -> JsonResponse:
    """Hand the spooler a task that runs ORM queries (404 without a spooler)."""
    if startup.SPOOL_TASK is None:
        return JsonResponse({"error": "no spooler"}, status=404)
    startup.SPOOL_TASK.spool({})
    return JsonResponse({"queued": True, "pid": os.getpid()})


def sleep(request: HttpRequest) -> JsonResponse:
    """Hold this worker's session in a server-side sleep of ``?seconds=``, then answer as
    ``whoami`` (harakiri tests; a burst of these reaches every sync worker)."""
    seconds = float(request.GET.get("seconds", "1"))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_sleep(%s)", [seconds])
        elif connection.vendor == "mysql":
            cursor.execute("SELECT SLEEP(%s)", [seconds])
        else:
            time.sleep(seconds)
    return JsonResponse({**_queries(), "slept": seconds})


_TICKS = [0]
_TICKER_LOCK = threading.Lock()
_ticker: threading.Thread | None = None


def _tick() -> None:
    while True:
        time.sleep(0.01)
        _TICKS[0] += 1


def ticks(request: HttpRequest) -> JsonResponse:
    """How often a background thread (started on the first call) has ticked, every 10 ms.

    Read first thing, so the count says what the thread did *between* requests: under
    uWSGI without ``enable-threads`` it does nothing there.
    """
    global _ticker
    now = _TICKS[0]
    with _TICKER_LOCK:
        if _ticker is None:
            _ticker = threading.Thread(target=_tick, daemon=True)
            _ticker.start()
    return JsonResponse({"pid": os.getpid(), "ticks": now})


def collect(request: HttpRequest) -> JsonResponse:
    """Run a full garbage collection in this worker, as a long-running worker eventually does."""
    return JsonResponse({"pid": os.getpid(), "collected": gc.collect()})
