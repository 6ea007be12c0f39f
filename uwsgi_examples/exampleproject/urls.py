"""URLs of the example project."""

from __future__ import annotations

from django.urls import path
from exampleproject.views import collect, enqueue, whoami

urlpatterns = [path("", whoami), path("spool", enqueue), path("collect", collect)]
