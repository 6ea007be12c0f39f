"""The example's views: ORM queries, and which process and server session ran them."""

from __future__ import annotations

import gc
import os

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


def whoami(request: HttpRequest) -> JsonResponse:
    """Run a few ORM queries; answer with the pid, the session's backend id and the loader's."""
    try:
        import uwsgi

        worker = int(uwsgi.worker_id())
    except ImportError:
        worker = 0
    backend = backend_id()
    count = ContentType.objects.filter(app_label__in=["auth", "contenttypes"]).count()
    groups = list(Group.objects.values_list("name", flat=True)[:5])
    return JsonResponse(
        {
            "pid": os.getpid(),
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
    )


def enqueue(request: HttpRequest) -> JsonResponse:
    """Hand the spooler a task that runs ORM queries (404 without a spooler)."""
    if startup.SPOOL_TASK is None:
        return JsonResponse({"error": "no spooler"}, status=404)
    startup.SPOOL_TASK.spool({})
    return JsonResponse({"queued": True, "pid": os.getpid()})


def collect(request: HttpRequest) -> JsonResponse:
    """Run a full garbage collection in this worker, as a long-running worker eventually does."""
    return JsonResponse({"pid": os.getpid(), "collected": gc.collect()})
