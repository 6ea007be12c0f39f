"""forksafe's Django settings, read at access time (so ``override_settings`` works).

One dict in ``settings.py``; every key is optional::

    FORKSAFE = {
        "INSTALL": True,            # AppConfig.ready() calls forksafe.install()
        "CLOSE_BEFORE_FORK": True,  # install(close_before_fork=...)
        "THREADS": False,           # install(threads=...)
        "FREEZE_GC": False,         # install(freeze_gc=...)
    }
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "get", "explicit", "invalid", "unknown_keys"]

DEFAULTS: dict[str, bool] = {
    "INSTALL": True,
    "CLOSE_BEFORE_FORK": True,
    "THREADS": False,
    "FREEZE_GC": False,
}


def _raw() -> Any:
    from django.conf import settings

    return getattr(settings, "FORKSAFE", {})


def unknown_keys() -> list[str]:
    """Keys of ``settings.FORKSAFE`` that forksafe does not know (typos)."""
    raw = _raw()
    if not isinstance(raw, dict):
        return []
    return sorted(str(k) for k in raw if k not in DEFAULTS)


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
