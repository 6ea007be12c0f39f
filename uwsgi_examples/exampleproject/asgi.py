"""ASGI entry point (uvicorn, daphne, gunicorn's uvicorn workers): forksafe first, then Django.

Run as ``uvicorn exampleproject.asgi:application``. With gunicorn's ``--preload`` the
arbiter imports this module and queries the database before it forks its workers; a
server that loads the application inside its running event loop (uvicorn) cannot query
synchronously there, so the loader's query is skipped. With forksafe, the application is
wrapped in ``forksafe.asgi.LifespanMiddleware``, as the README recommends.
"""

from __future__ import annotations

import asyncio
import os

from exampleproject import startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")
os.environ["EXAMPLE_ASGI"] = "1"

startup.install_forksafe()

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
if os.environ.get("EXAMPLE_FORKSAFE", "1") == "1":
    import forksafe.asgi

    # Lifespan events: the executor's and the pools' sessions say goodbye at shutdown.
    application = forksafe.asgi.LifespanMiddleware(application)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


if not _in_event_loop():
    startup.touch_database()
