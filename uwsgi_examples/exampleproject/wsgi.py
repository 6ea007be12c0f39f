"""WSGI entry point, as a real project has it: forksafe first, then Django.

The loading process (uWSGI's master, gunicorn's arbiter with ``preload_app``)
queries the database before the server forks its workers: exactly the case
where, without forksafe, every worker shares the loader's server session.
"""

from __future__ import annotations

import os

from exampleproject import startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")

startup.register_user_hook("before")
startup.install_forksafe()
startup.register_user_hook("after")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
startup.touch_database()
startup.warm_up(application)
startup.register_mule()
startup.register_spooler()
