"""Tasks and initializers for plain multiprocessing children (``tests/test_spawn_children.py``).

Nothing here imports Django's models at the top level: a spawn/forkserver child imports this
module before anything sets Django up. :mod:`tests.harness.spawn_models` does import one.
"""

from __future__ import annotations

import os

_initialized: list[object] = []


def remember(*initargs: object) -> None:
    """A chained initializer: keep its arguments for :func:`initialized`."""
    _initialized.extend(initargs)


def initialized(_: object = None) -> list[object]:
    return list(_initialized)


def orm_count(_: object = None) -> int:
    """An ORM query: needs ``django.setup()`` (``AppRegistryNotReady`` without it)."""
    from tests.testapp.models import Item

    return Item.objects.count()


def session(_: object = None) -> tuple[int, int]:
    """A raw query (settings load lazily from ``DJANGO_SETTINGS_MODULE``); (pid, session)."""
    from forksafe._sessions import backend_id

    return os.getpid(), backend_id()
