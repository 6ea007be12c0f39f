"""System checks (``manage.py check``), ids ``forksafe.E00N`` / ``forksafe.W00N``, never reused.

=============  ==================================================================
id             what it catches
=============  ==================================================================
forksafe.E001  ``settings.FORKSAFE`` is not a dict, or has keys forksafe does not know
forksafe.E002  a ``FORKSAFE`` value of the wrong type
forksafe.W001  a database uses Django's native pool but forksafe's fork hooks are not
               installed: forked workers would share the parent's pooled sessions
forksafe.W002  running under uWSGI without ``master``: the postfork hook cannot run
forksafe.W003  running under uWSGI without threads enabled while something needs
               background threads (``FORKSAFE["THREADS"]``, a native pool)
=============  ==================================================================

Django runs system checks in management commands only, never inside a WSGI
server, so the uWSGI checks (W002, W003) are also run by ``AppConfig.ready()``
under uWSGI and logged there (see :func:`log_server_warnings`).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core import checks

from forksafe import conf

__all__ = ["log_server_warnings", "register"]

logger = logging.getLogger("forksafe")


def _settings_errors() -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    valid = ", ".join(sorted(conf.DEFAULTS))
    for key in conf.unknown_keys():
        errors.append(
            checks.Error(
                f"settings.FORKSAFE has an unknown key {key!r}.",
                hint=f"Valid keys are: {valid}. Remove or rename {key!r}.",
                id="forksafe.E001",
            )
        )
    for key, value in conf.invalid():
        if key == "FORKSAFE":
            errors.append(
                checks.Error(
                    f"settings.FORKSAFE must be a dict, not {type(value).__name__}.",
                    hint=f"Use FORKSAFE = {{...}} with the keys {valid}.",
                    id="forksafe.E001",
                )
            )
        else:
            errors.append(
                checks.Error(
                    f"settings.FORKSAFE[{key!r}] must be True or False, not {value!r}.",
                    hint=f"Set FORKSAFE[{key!r}] = {conf.DEFAULTS[key]!r} (the default) or"
                    f" {not conf.DEFAULTS[key]!r}.",
                    id="forksafe.E002",
                )
            )
    return errors


def _pool_aliases() -> list[str]:
    from django.conf import settings

    return [
        alias
        for alias, db in settings.DATABASES.items()
        if isinstance(db.get("OPTIONS"), dict) and db["OPTIONS"].get("pool")
    ]


def _hooks_installed() -> bool:
    from forksafe import _fork

    return _fork.hooks_installed()


def _pool_without_hooks() -> list[checks.CheckMessage]:
    aliases = _pool_aliases()
    if not aliases or _hooks_installed():
        return []
    return [
        checks.Warning(
            f"Database(s) {', '.join(map(repr, aliases))} use Django's native connection"
            " pool, but forksafe's fork hooks are not installed: processes forked after"
            " the pool opened (gunicorn/uWSGI workers, multiprocessing) share its sessions.",
            hint="Add 'forksafe' to INSTALLED_APPS with FORKSAFE['INSTALL'] left True, or"
            " call forksafe.install() at the top of manage.py and wsgi.py.",
            id="forksafe.W001",
        )
    ]


def _uwsgi_options() -> dict[str, Any] | None:
    """uWSGI's options when running inside uWSGI, else None."""
    try:
        import uwsgi
    except ImportError:
        return None
    opt = getattr(uwsgi, "opt", None)
    return dict(opt) if opt is not None else {}


def _truthy(value: Any) -> bool:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, list):
        return any(_truthy(v) for v in value)
    return str(value).strip().lower() not in ("", "0", "false", "no", "off")


def uwsgi_messages(opt: dict[str, Any] | None) -> list[checks.CheckMessage]:
    """W002/W003 for uWSGI options ``opt`` (``uwsgi.opt``); ``[]`` outside uWSGI."""
    if opt is None:
        return []
    messages: list[checks.CheckMessage] = []
    if not _truthy(opt.get("master", False)):
        messages.append(
            checks.Warning(
                "uWSGI runs without 'master': uwsgidecorators refuses to run postfork"
                " hooks, so forksafe cannot reset connections in workers and they share"
                " the connections the app opened while loading.",
                hint="Add 'master = true' to the uWSGI configuration, or call"
                " forksafe.after_fork_in_child() at the start of every worker yourself.",
                id="forksafe.W002",
            )
        )
    threads_on = (
        _truthy(opt.get("enable-threads", False)) or int(_last(opt.get("threads", 0)) or 0) > 1
    )
    needs = []
    if conf.get("THREADS"):
        needs.append("FORKSAFE['THREADS']")
    if _pool_aliases():
        needs.append("Django's native pool")
    if not threads_on and needs:
        messages.append(
            checks.Warning(
                f"uWSGI runs without Python threads, but {' and '.join(needs)} rely on"
                " them: their threads never run between requests.",
                hint="Add 'enable-threads = true' to the uWSGI configuration.",
                id="forksafe.W003",
            )
        )
    return messages


def _last(value: Any) -> Any:
    """The value of a uWSGI option: the last one given when it was repeated."""
    if isinstance(value, list):
        value = value[-1] if value else 0
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value


def _uwsgi_checks() -> list[checks.CheckMessage]:
    return uwsgi_messages(_uwsgi_options())


def forksafe_checks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every forksafe check; registered with Django's check framework."""
    return [*_settings_errors(), *_pool_without_hooks(), *_uwsgi_checks()]


def register() -> None:
    """Register the checks (called from ``AppConfig.ready()``; idempotent)."""
    checks.register(forksafe_checks)


def log_server_warnings() -> list[checks.CheckMessage]:
    """Log the checks that only make sense inside a server (Django won't run them there).

    W002 is left out: ``forksafe.uwsgi.install()`` already logs the missing
    master, with what to do.
    """
    messages = [m for m in _uwsgi_checks() if m.id != "forksafe.W002"]
    for message in messages:
        logger.warning("%s: %s HINT: %s", message.id, message.msg, message.hint)
    return messages
