"""Set Django up in a process that starts without it (spawn/forkserver workers, RQ's horses)."""

from __future__ import annotations

import os

__all__ = ["setup_django"]


def setup_django(settings_module: str | None = None) -> None:
    """``django.setup()`` once, from ``settings_module`` or ``DJANGO_SETTINGS_MODULE``.

    ``settings_module`` is put into ``DJANGO_SETTINGS_MODULE`` first (a spawned
    child gets the parent's that way). Nothing happens when no settings module is
    named -- the process does not use Django -- or when Django is set up already.
    """
    if settings_module is not None:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
