"""gevent integration: patch the standard library, then close each greenlet's connections.

.. code-block:: python

    # first lines of the program, before Django is imported
    import forksafe.gevent

    forksafe.gevent.patch_all()

gunicorn's gevent worker (``-k gevent``) patches by itself: there the
``forksafe.gunicorn`` hooks in ``gunicorn.conf.py`` are enough (gevent calls
forksafe's ``did_patch_all`` plugin after its patch). See ``forksafe._green``
for how a greenlet's end is seen.
"""

from __future__ import annotations

import contextlib
from typing import Any

try:
    import gevent.monkey
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("forksafe.gevent needs gevent: pip install 'forksafe[gevent]'") from exc

from forksafe import _green

__all__ = ["did_patch_all", "patch_all"]


def patch_all(**kwargs: Any) -> None:
    """Patch as ``gevent.monkey.patch_all()`` (same keywords), psycopg2 too; close per greenlet.

    With psycogreen installed, psycopg2 waits through gevent's hub
    (``psycogreen.gevent.patch_psycopg``) instead of blocking the whole process
    on every query. Then every greenlet that connects closes its connections
    when it ends (``forksafe._green``). Call it before Django is imported.
    """
    _patch_psycopg2()
    _green.request()
    gevent.monkey.patch_all(**kwargs)  # calls did_patch_all()
    _green.enable()


def _patch_psycopg2() -> None:
    """psycogreen's ``patch_psycopg()`` when psycogreen and psycopg2 are installed."""
    try:
        from psycogreen.gevent import patch_psycopg
    except ImportError:
        return
    with contextlib.suppress(ImportError):  # psycopg2 is not installed: nothing to patch
        patch_psycopg()


def did_patch_all(event: object) -> None:
    """gevent's ``gevent.plugins.monkey.did_patch_all`` plugin (forksafe's package metadata).

    Where forksafe is in use, greenlets close their connections from now on
    (``forksafe._green``), psycopg2 waits through gevent's hub when psycogreen is
    installed (gunicorn's gevent worker patches without it), and the gevent checks
    (W020-W023) are logged once when Django's settings are already configured
    (``preload_app``).
    """
    if _green.did_patch_all(event):
        _patch_psycopg2()
        from forksafe import checks  # here: a gevent program without forksafe imports no Django

        checks.log_gevent_warnings()
