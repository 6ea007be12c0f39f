"""The gevent checks in a real patched process: ``python gevent_checks.py MODE URL``.

``late``: Django is set up (and connects) before ``gevent.monkey.patch_all()``, as
``preload_app`` does; ``late-forksafe``: the same after ``forksafe.install()``, whose
gevent plugin re-homes Django's connections; ``first``: ``forksafe.gevent.patch_all()``
before Django. Prints as JSON the ids of forksafe's system checks, whether two greenlets
got one connection wrapper, and whether the main thread's connection opened before the
patch was closed.
"""

from __future__ import annotations

import json
import sys

mode, url = sys.argv[1], sys.argv[2]
if mode == "first":
    import forksafe.gevent

    forksafe.gevent.patch_all()

import django  # noqa: E402

from forksafe._urls import configure_django  # noqa: E402

configure_django(url)
django.setup()
if mode == "late-forksafe":
    import forksafe

    forksafe.install()
from django.db import connection  # noqa: E402

connection.ensure_connection()
from django.db import connections  # noqa: E402

before = connections["default"]
if mode != "first":
    from gevent import monkey

    monkey.patch_all()

import gevent  # noqa: E402

from forksafe import checks  # noqa: E402

wrappers = [gevent.spawn(lambda: id(connections["default"])) for _ in range(2)]
gevent.joinall(wrappers, timeout=10, raise_error=True)
ids = sorted(str(m.id) for m in checks.forksafe_checks())
shared = len({g.value for g in wrappers}) == 1
print(json.dumps({"ids": ids, "shared": shared, "closed": before.connection is None}))
