"""What forksafe knows about a uWSGI server: the one place that reads uWSGI's options.

Read by the uWSGI hook (``forksafe.uwsgi``), the system checks (``forksafe.checks``:
W002, W003) and ``forksafe doctor``: inside the server from ``uwsgi.opt``, outside it
from the ``UWSGI_*`` variables that configure one.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "THREADS_ALWAYS_ON",
    "ServerFacts",
    "configured_facts",
    "facts_from_options",
    "running_under_uwsgi",
    "server_facts",
]


def running_under_uwsgi() -> bool:
    """Whether this interpreter is embedded in a uWSGI server.

    The ``uwsgi`` module exists only there (the ``uwsgi`` package on PyPI
    installs the server binary and ``uwsgidecorators``, not that module).
    """
    return "uwsgi" in sys.modules or "uwsgi" in sys.builtin_module_names


@dataclass(frozen=True)
class ServerFacts:
    """What forksafe needs to know about a uWSGI server: the one place that reads it."""

    source: str  # "uwsgi.opt" inside uWSGI, else "environment (UWSGI_...)"
    master: bool
    # uWSGI 2.0.27+, enable-threads, or threads > 1: Python threads run between requests.
    python_threads: bool
    lazy_apps: bool
    processes: int | None
    threads: int | None


def _last(value: Any) -> Any:
    """An option's value: the last one given when it was repeated; text, not bytes."""
    if isinstance(value, list):
        value = value[-1] if value else ""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value


def _flag(value: Any) -> bool:
    return str(_last(value)).strip().lower() not in ("", "0", "false", "no", "off")


def _count(value: Any) -> int | None:
    text = str(_last(value)).strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


# uWSGI runs Python threads unconditionally since 2.0.27 (commit 1caea16, "set enable
# threads by default": https://github.com/unbit/uwsgi/commit/1caea16df8d681b66071192b05ada588c3368e28).
THREADS_ALWAYS_ON = (2, 0, 27)


def facts_from_options(
    options: Mapping[str, Any],
    *,
    source: str = "uwsgi.opt",
    master: bool | None = None,
    version: tuple[int, ...] | None = None,
) -> ServerFacts:
    """Read :class:`ServerFacts` from uWSGI options as ``uwsgi.opt`` holds them.

    Flags are ``True``, values bytes, repeated options lists. ``master``, when
    given, wins over the ``master`` option (``uwsgi.masterpid()`` knows).
    ``version`` is uWSGI's (major, minor, revision); unknown is taken for an old one.
    """
    threads = _count(options.get("threads", ""))
    always_threads = version is not None and version >= THREADS_ALWAYS_ON
    return ServerFacts(
        source=source,
        master=_flag(options.get("master", False)) if master is None else master,
        python_threads=always_threads
        or _flag(options.get("enable-threads", False))
        or (threads or 0) > 1,
        lazy_apps=_flag(options.get("lazy-apps", False)) or _flag(options.get("lazy", False)),
        processes=_count(options.get("processes", "")) or _count(options.get("workers", "")),
        threads=threads,
    )


def server_facts() -> ServerFacts | None:
    """Return the facts of the uWSGI server running this interpreter; None outside uWSGI."""
    if not running_under_uwsgi():
        return None
    import uwsgi

    info = getattr(uwsgi, "version_info", None)
    return facts_from_options(
        getattr(uwsgi, "opt", {}),
        master=bool(uwsgi.masterpid()),
        version=tuple(int(part) for part in info[:3]) if info else None,
    )


def configured_facts(environ: Mapping[str, str] = os.environ) -> ServerFacts | None:
    """Return the facts that ``UWSGI_*`` variables configure; None when none is set.

    uWSGI reads every option from a variable too (``enable-threads``:
    ``UWSGI_ENABLE_THREADS``): what ``forksafe doctor`` sees outside the server.
    """
    names = sorted(k for k in environ if k.startswith("UWSGI_"))
    if not names:
        return None
    options = {k[6:].lower().replace("_", "-"): environ[k] for k in names}
    return facts_from_options(
        options, source=f"environment ({', '.join(names)})", version=_installed_version()
    )


def _installed_version() -> tuple[int, ...] | None:
    """The version of the installed uWSGI distribution, or None."""
    try:
        text = importlib.metadata.version("uwsgi")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for part in text.split(".")[:3]:
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts) or None
