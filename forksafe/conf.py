"""forksafe's Django settings, read at access time (so ``override_settings`` works).

One dict in ``settings.py``; every key is optional::

    FORKSAFE = {
        "INSTALL": True,            # AppConfig.ready() calls forksafe.install()
        "CLOSE_BEFORE_FORK": True,  # install(close_before_fork=...); left out: the default
        "THREADS": False,           # install(threads=...); unset: on under ASGI
        "POOLER": "transaction",    # or {"default": "transaction"}: how PgBouncer pools
        "FREEZE_GC": False,         # install(freeze_gc=...)
    }

``THREADS`` left unset is switched on at the first ASGI request
(``forksafe.asgi``); :func:`get` still answers its default, ``False``, until then.

``POOLER`` is not a switch: it tells the system checks and ``forksafe doctor``
how a connection pooler in front of PostgreSQL pools each alias (see
:mod:`forksafe._pooler`); it is validated there.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "OTHER_KEYS", "explicit", "get", "invalid", "raw_value", "unknown_keys"]

DEFAULTS: dict[str, bool] = {
    "INSTALL": True,
    "CLOSE_BEFORE_FORK": False,
    "THREADS": False,
    "FREEZE_GC": False,
}
#: Keys that are not switches; whoever uses them validates them.
OTHER_KEYS = ("POOLER",)


def _raw() -> Any:
    from django.conf import settings

    return getattr(settings, "FORKSAFE", {})


def unknown_keys() -> list[str]:
    """Keys of ``settings.FORKSAFE`` that forksafe does not know (typos)."""
    raw = _raw()
    if not isinstance(raw, dict):
        return []
    return sorted(str(k) for k in raw if k not in DEFAULTS and k not in OTHER_KEYS)


def invalid() -> list[tuple[str, Any]]:
    """``(key, value)`` pairs with a value of the wrong type; ``("FORKSAFE", v)`` if not a dict."""
    raw = _raw()
    if not isinstance(raw, dict):
        return [("FORKSAFE", raw)]
    return [(k, v) for k, v in raw.items() if k in DEFAULTS and not isinstance(v, bool)]


def get(key: str) -> bool:
    """The value of ``key``; its default when unset or invalid (a system check reports that)."""
    raw = _raw()
    value = raw.get(key, DEFAULTS[key]) if isinstance(raw, dict) else DEFAULTS[key]
    return value if isinstance(value, bool) else DEFAULTS[key]


def explicit(key: str) -> bool | None:
    """The value the settings give ``key`` explicitly (and validly), else ``None``."""
    raw = _raw()
    if not isinstance(raw, dict) or key not in raw:
        return None
    value = raw[key]
    return value if isinstance(value, bool) else None


def raw_value(key: str) -> Any:
    """The value of one of :data:`OTHER_KEYS` as the settings give it (None when unset)."""
    raw = _raw()
    return raw.get(key) if isinstance(raw, dict) else None
