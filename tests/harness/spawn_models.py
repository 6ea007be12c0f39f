"""A pool initializer in a module that imports a model at the top level.

A spawn/forkserver child unpickles it with its process object: that works only when
Django was set up before (``forksafe.pools.cover_children``).
"""

from __future__ import annotations

from django.apps import apps

from tests.testapp.models import Item


def check_ready() -> None:
    assert apps.ready and Item._meta.db_table
