"""URLs of the example project."""

from __future__ import annotations

from django.urls import path
from exampleproject.views import (
    collect,
    enqueue,
    sleep,
    ticks,
    whoami,
    whoami_async,
    whoami_async_unsafe,
    whoami_to_thread,
)

urlpatterns = [
    path("", whoami),
    path("async", whoami_async),
    path("async-unsafe", whoami_async_unsafe),
    path("to-thread", whoami_to_thread),
    path("spool", enqueue),
    path("sleep", sleep),
    path("ticks", ticks),
    path("collect", collect),
]
