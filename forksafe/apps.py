"""The Django app: add ``"forksafe"`` to ``INSTALLED_APPS`` and the hooks install themselves."""

from __future__ import annotations

from django.apps import AppConfig

from forksafe import _green, asgi, checks, conf
from forksafe._install import cover_asgi, install

__all__ = ["ForkSafeConfig"]


class ForkSafeConfig(AppConfig):
    """Installs forksafe in ``ready()`` according to ``settings.FORKSAFE``.

    ``ready()`` runs once per process, after the app registry is populated and
    before any request -- in the uWSGI master or gunicorn arbiter too when the
    app is preloaded, which is where the hooks must be in place. Under ASGI, the
    first request of each event loop installs ``forksafe.asgi``'s executor and,
    unless ``FORKSAFE["THREADS"]`` says otherwise, ``install(threads=True)``. Calling
    ``forksafe.install()`` earlier yourself (top of ``manage.py``/``wsgi.py``)
    is fine: it is idempotent, and ``ready()`` then only applies the options.
    """

    name = "forksafe"
    verbose_name = "forksafe"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        checks.register()
        if conf.get("INSTALL"):
            # Under ASGI, at the first request of each event loop: the loop's executor,
            # THREADS when unset, the ASGI check; Django's handler answers lifespan
            # events (a goodbye at shutdown, also when uvicorn is stopped with SIGTERM).
            # Nothing happens under WSGI.
            cover_asgi()
            # Event loops outside ASGI (asyncio.run() in a command or a worker): the loop's
            # default executor and asgiref's single thread apply Django's rules and close.
            asgi.cover_event_loops()
            asgi.cover_sync_to_async()
            asgi.call_at_first_request(_log_asgi_warnings)
            # Only the options the settings name: an explicit install() call
            # made earlier keeps the rest.
            install(
                close_before_fork=conf.explicit("CLOSE_BEFORE_FORK"),
                threads=conf.explicit("THREADS"),
                freeze_gc=conf.explicit("FREEZE_GC"),
            )
            # Django runs no system checks inside a WSGI server: say it here.
            checks.log_server_warnings()
            if _green.patched():
                checks.log_gevent_warnings()
            # django.tasks (Django 6.0+) or its backport: the rules around every worker's task.
            _connect_tasks()


def _connect_tasks() -> None:
    """Connect ``forksafe.tasks`` when a tasks framework is importable."""
    try:
        from forksafe import tasks
    except ImportError as exc:
        if exc.name in ("django.tasks", "django_tasks"):
            return  # no tasks framework here: nothing to connect
        raise
    tasks.connect()


def _log_asgi_warnings() -> None:
    """At the first ASGI request: W005 (Django runs no system checks inside a server)."""
    checks.log_asgi_warnings("an ASGI request was served")
