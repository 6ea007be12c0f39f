"""URLs of the example project."""

from __future__ import annotations

from django.urls import path
from exampleproject.views import enqueue, sleep, ticks, whoami

urlpatterns = [
    path("", whoami),
    path("spool", enqueue),
    path("sleep", sleep),
    path("ticks", ticks),
]
