"""Greenlets a program spawns itself under gevent: ``python greenlets.py forksafe|plain N URL``.

``forksafe``: ``forksafe.gevent.patch_all()``; ``plain``: ``gevent.monkey.patch_all()``.
Django is configured for the database URL alone (no ``forksafe`` app). Spawns N
greenlets that each query once, waits for them (keeping the finished greenlets, as
code that reads their values does), and prints as JSON the sessions they used and
those of them the server still lists.
"""

from __future__ import annotations

import json
import sys

mode, count, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "forksafe":
    import forksafe.gevent

    forksafe.gevent.patch_all()
else:
    from gevent import monkey

    monkey.patch_all()

import django  # noqa: E402
import gevent  # noqa: E402

from forksafe._urls import configure_django  # noqa: E402

configure_django(url)
django.setup()

from forksafe._sessions import backend_id, list_sessions  # noqa: E402


def work() -> int:
    gevent.sleep(0.01)  # all of them connected at once
    return backend_id()


greenlets = [gevent.spawn(work) for _ in range(count)]
gevent.joinall(greenlets, timeout=30, raise_error=True)
used = {g.value for g in greenlets}
gevent.sleep(0.2)
sessions = list_sessions()
assert sessions is not None
print(json.dumps({"used": len(used), "left": len(used & {s.id for s in sessions})}))
