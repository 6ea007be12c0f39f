"""Process pools whose workers never share, kill or leak the parent's database sessions.

Drop-in replacements for :class:`multiprocessing.Process`, :func:`multiprocessing.Pool`,
:func:`multiprocessing.get_context` and :class:`concurrent.futures.ProcessPoolExecutor`,
for the standard library and for the dill-based ``multiprocess`` package
(``library="multiprocess"``). They work whether or not :func:`forksafe.install` was
called, under every start method.

Everything happens in the process classes, so anything that builds its workers from a
forksafe context (``ctx.Pool``, ``ctx.Process``, the executor) gets it:

* **In the parent, before a fork** (``fork`` start method): the pre-fork cleanup of
  :func:`forksafe.prepare_fork` runs in the forking thread (once per fork; not with
  ``install(close_before_fork=False)``): it closes that thread's idle connections, never
  one with an open cursor or a transaction.
* **In the worker, before anything else** (``BaseProcess._bootstrap``, the first Python
  code of a child under every start method): inherited connections are detached with no
  network I/O and the worker's wrappers start with *clean* transaction state, even when
  the pool was created inside ``transaction.atomic()``: a worker runs its tasks outside
  the parent's block. The worker then opens a session of its own on its first query and
  keeps it across tasks.
* **spawn / forkserver**: nothing is inherited, but Django must be set up. The parent's
  settings module (``settings.SETTINGS_MODULE``, i.e. ``DJANGO_SETTINGS_MODULE``) travels
  with the pickled process object and ``django.setup()`` runs while it is unpickled in the
  child -- *before* the worker's target, initializer and tasks are unpickled, so modules
  that import models at the top level work. Settings made with ``settings.configure()``
  cannot be carried (they may hold anything, including unpicklable objects): starting a
  spawn/forkserver worker from such a parent raises ``ImproperlyConfigured`` in the parent.
* **When the worker exits normally** (``maxtasksperchild`` / ``max_tasks_per_child``
  reached, ``close()`` + ``join()``, the executor's ``shutdown()``, a ``Process`` whose
  target returned or raised): its connections are closed in the worker's thread, so the
  server-side count goes back to its baseline. A worker that dies without running Python
  code (``terminate()`` sends SIGTERM, SIGKILL, ``os._exit``) closes nothing; the kernel
  closes its sockets and the server ends those sessions when it reads EOF.

For pools forksafe does not build (third-party code's own ``multiprocessing.Pool`` or
``ProcessPoolExecutor`` under spawn/forkserver, Python 3.14's default on Linux):
:func:`initializer` as the pool's initializer, or the opt-in :func:`cover_children`, which
needs none. Both set Django up in the child and close its connections when it exits normally.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.pool
import multiprocessing.process
import multiprocessing.util
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from forksafe import _exit, _fork
from forksafe._setup import setup_django

logger = logging.getLogger("forksafe")

__all__ = [
    "LIBRARIES",
    "Pool",
    "Process",
    "ProcessPoolExecutor",
    "cover_children",
    "get_context",
    "initializer",
]

LIBRARIES = ("multiprocessing", "multiprocess")
"""The values ``library=`` accepts."""

_contexts: dict[tuple[str, str], Any] = {}


# --- what runs in the parent ----------------------------------------------------------------


def _settings_module_to_carry() -> str | None:
    """The settings module a spawn/forkserver child must load (parent side).

    ``None`` when this process does not use Django. Raises ``ImproperlyConfigured``
    when the settings came from ``settings.configure()``: they cannot be rebuilt in
    a fresh interpreter.
    """
    if "django" not in sys.modules:
        return None
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if not settings.configured:
        return os.environ.get("DJANGO_SETTINGS_MODULE") or None
    module: str | None = settings.SETTINGS_MODULE
    if not module:
        raise ImproperlyConfigured(
            "forksafe: a spawn/forkserver worker starts a fresh interpreter and must set"
            " Django up from a settings module, but this process configured its settings"
            " with settings.configure(), which cannot be carried to another process. Set"
            " DJANGO_SETTINGS_MODULE (a module with those settings), or use the 'fork'"
            " start method: forksafe.get_context('fork')."
        )
    return module


def _before_fork() -> None:
    """The pre-fork cleanup, in the thread about to fork (skipped if the at-fork hook runs it)."""
    if "django.db" not in sys.modules or not _fork.wrappers_clean_up():
        return
    _fork.cleanup()


# --- what runs in the child -----------------------------------------------------------------


class _DjangoSetup:
    """Pickled ahead of a spawn/forkserver worker's state: sets Django up while unpickled."""

    def __init__(self, settings_module: str | None) -> None:
        self.settings_module = settings_module

    def __reduce__(self) -> tuple[Callable[[str | None], None], tuple[str | None]]:
        return (_setup_django, (self.settings_module,))


def _setup_django(settings_module: str | None) -> None:
    """In a spawn/forkserver child: ``django.setup()`` from the parent's settings module."""
    if settings_module is not None:
        setup_django(settings_module)


def _rebuild_process(ref: Any, _django: None) -> Any:
    """Unpickle a worker process object (``_django`` ran :func:`_setup_django` already)."""
    cls = _context(*ref).Process if isinstance(ref, tuple) else ref
    return cls.__new__(cls)


def _worker_started() -> None:
    """First thing in every worker: detach what was inherited, clean transaction state."""
    if "django.db" not in sys.modules:
        return  # nothing can hold a connection
    try:
        _fork.reset_child(worker=True)
    except Exception:
        logger.warning(
            "forksafe: detaching the worker's inherited connections failed", exc_info=True
        )


def _worker_exiting() -> None:
    """Last thing in a worker that exits normally: close its own sessions (and pools)."""
    _exit.close_own_connections()


class _ForksafeProcess:
    """Mixed into a library's process class, before it in the MRO."""

    _forksafe_settings: str | None = None

    def _forksafe_method(self) -> str:
        method: str | None = getattr(self, "_start_method", None)
        if method is None:  # the default context's Process
            method = _default_method(_library_of(type(self)))
        return method

    def start(self) -> None:
        """Start the process (see :meth:`multiprocessing.Process.start`).

        In the calling (parent) thread: the pre-fork cleanup before a fork, or for
        spawn/forkserver the check that Django's settings can be carried.
        """
        if self._forksafe_method() == "fork":
            _before_fork()
        else:
            self._forksafe_settings = _settings_module_to_carry()
        super().start()  # type: ignore[misc]

    def _bootstrap(self, *args: Any, **kwargs: Any) -> int:
        # The first Python code of the child under every start method.
        try:
            _worker_started()
        except Exception:
            logger.warning(
                "forksafe: detaching the worker's inherited connections at start-up failed",
                exc_info=True,
            )
        try:
            code: int = super()._bootstrap(*args, **kwargs)  # type: ignore[misc]
            return code
        finally:
            _worker_exiting()

    def __reduce__(self) -> tuple[Any, ...]:
        # spawn/forkserver: Django is set up before the target and args are unpickled.
        cls = type(self)
        ref: Any = cls.__dict__.get("_forksafe_key", cls)
        return (_rebuild_process, (ref, _DjangoSetup(self._forksafe_settings)), self.__dict__)


class Process(_ForksafeProcess, multiprocessing.context.Process):
    """:class:`multiprocessing.Process` (default start method) with forksafe's worker care.

    Subclass it and override ``run()`` as usual: the reset happens before ``run()`` in
    the child, and the child's connections are closed after ``run()`` returns or raises.
    """


# --- contexts ------------------------------------------------------------------------------


def _import_library(library: str) -> Any:
    if library not in LIBRARIES:
        raise ValueError(
            f"unknown library {library!r}; choose one of: {', '.join(repr(x) for x in LIBRARIES)}"
        )
    try:
        return importlib.import_module(library)
    except ImportError as exc:
        raise ImportError(
            f"forksafe: library={library!r} needs the {library!r} package:"
            " pip install 'forksafe[multiprocess]'"
        ) from exc


def _library_of(cls: type) -> str:
    for klass in cls.__mro__:
        root = klass.__module__.partition(".")[0]
        if root in LIBRARIES:
            return root
    return "multiprocessing"


def _default_method(library: str) -> str:
    mod = _import_library(library)
    method: str | None = mod.get_start_method(allow_none=True)
    if method is None:
        method = str(mod.get_all_start_methods()[0])  # documented: the first is the default
    return method


def _context(library: str, method: str) -> Any:
    """The (cached) forksafe context of ``library`` for ``method``."""
    key = (library, method)
    ctx = _contexts.get(key)
    if ctx is not None:
        return ctx
    mod = _import_library(library)
    valid = list(mod.get_all_start_methods())
    if method not in valid:
        raise ValueError(
            f"unknown start method {method!r} for {library}; choose one of:"
            f" {', '.join(repr(m) for m in valid)}"
        )
    base = mod.get_context(method)
    process_cls = type(
        f"{method.capitalize()}Process",
        (_ForksafeProcess, base.Process),
        {"_forksafe_key": key, "__module__": __name__},
    )

    def get_context(self: Any, method: str | None = None) -> Any:
        return self if method is None else _context(library, method)

    ctx_cls = type(
        f"{method.capitalize()}Context",
        (type(base),),
        {"Process": process_cls, "get_context": get_context, "__module__": __name__},
    )
    ctx = ctx_cls()
    _contexts[key] = ctx
    return ctx


def get_context(method: str | None = None, *, library: str = "multiprocessing") -> Any:
    """A multiprocessing context whose processes (and so pools) are forksafe workers.

    Like :func:`multiprocessing.get_context`: ``method`` is ``"fork"``, ``"spawn"`` or
    ``"forkserver"`` (what the platform supports), ``None`` for the library's default
    (``fork`` on Linux before Python 3.14, ``forkserver`` from 3.14). ``library`` is
    ``"multiprocessing"`` or ``"multiprocess"`` (the dill-based package: lambdas and
    closures as tasks). Everything else of the context (queues, locks, managers,
    ``ctx.Pool``) is the library's own.

    Raises ``ValueError`` for an unknown library or start method (the message lists the
    valid ones) and ``ImportError`` naming the extra when ``multiprocess`` is missing.

    The result is an instance of a subclass of the library's own context class for
    ``method`` (``ForkContext``...), typed ``Any`` because the two libraries' classes
    have no common typed base that has ``Process``.
    """
    if method is not None and not isinstance(method, str):
        raise ValueError(f"start method must be a string or None, not {method!r}")
    if not isinstance(library, str):
        raise ValueError(f"library must be one of {LIBRARIES}, not {library!r}")
    return _context(library, method if method is not None else _default_method(library))


def _as_forksafe_context(context: Any, method: str | None = None) -> Any:
    """``context`` (forksafe, stdlib, ``multiprocess`` or ``None``) as a forksafe context."""
    if context is None:
        return get_context(method)
    if context in _contexts.values():
        return context
    get_start_method = getattr(context, "get_start_method", None)
    if get_start_method is None:
        raise ValueError(f"not a multiprocessing context: {context!r}")
    return _context(_library_of(type(context)), get_start_method(allow_none=False))


def Pool(  # noqa: N802 - the stdlib's name
    processes: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    maxtasksperchild: int | None = None,
    context: Any = None,
) -> multiprocessing.pool.Pool:
    """:func:`multiprocessing.Pool` whose workers are forksafe (see the module docs).

    ``context``: a context of :func:`get_context` (or a plain ``multiprocessing`` /
    ``multiprocess`` context, made forksafe); default: the standard library's default
    start method. ``forksafe.get_context(method, library=...).Pool(...)`` is the same.
    Workers keep their own connection across tasks and close it when they exit.
    """
    ctx = _as_forksafe_context(context)
    if ctx.get_start_method() != "fork":
        _settings_module_to_carry()  # fail in the caller, not in every worker
    pool: multiprocessing.pool.Pool = ctx.Pool(processes, initializer, initargs, maxtasksperchild)
    return pool


class ProcessPoolExecutor(concurrent.futures.ProcessPoolExecutor):
    """:class:`concurrent.futures.ProcessPoolExecutor` whose workers are forksafe.

    Same arguments. ``mp_context`` may be a context of :func:`get_context` or of the
    standard library (made forksafe); like the standard library, the default is the
    default start method, or ``spawn`` when ``max_tasks_per_child`` is given. The
    executor is built on the standard library's ``multiprocessing``: use
    ``forksafe.get_context(library="multiprocess").Pool`` for ``multiprocess``.
    Workers close their sessions on ``shutdown()`` and when ``max_tasks_per_child`` is
    reached; a worker that dies makes the executor raise ``BrokenProcessPool`` as usual.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        if mp_context is not None and _library_of(type(mp_context)) != "multiprocessing":
            raise ValueError(
                "forksafe.ProcessPoolExecutor needs a context of the standard library's"
                " multiprocessing; for multiprocess use"
                " forksafe.get_context(library='multiprocess').Pool(...)"
            )
        ctx = _as_forksafe_context(mp_context, "spawn" if max_tasks_per_child else None)
        if ctx.get_start_method() != "fork":
            _settings_module_to_carry()
        super().__init__(
            max_workers, ctx, initializer, initargs, max_tasks_per_child=max_tasks_per_child
        )


# --- children of third-party code: plain multiprocessing pools and processes ----------------

#: The exit priority of the finalizer that closes a covered child's connections
#: (``multiprocessing.util.Finalize``; run by the child's ``_bootstrap`` after its target).
_EXIT_PRIORITY = 0


def _close_at_child_exit() -> None:
    """In a child: close its connections when multiprocessing ends it normally.

    multiprocessing ends a child with ``os._exit()`` (no :mod:`atexit`), after
    ``util._exit_function()`` ran the finalizers registered with an exit priority: the
    exit path forksafe's own workers take (:func:`_worker_exiting`). Registered once.
    """
    registry: dict[Any, Any] = multiprocessing.util._finalizer_registry  # type: ignore[attr-defined]
    if not any(
        getattr(finalizer, "_callback", None) is _exit.close_own_connections
        for finalizer in list(registry.values())
    ):
        multiprocessing.util.Finalize(
            None, _exit.close_own_connections, exitpriority=_EXIT_PRIORITY
        )


class _Initializer:
    """What :func:`initializer` returns: picklable, so spawn/forkserver children get it."""

    def __init__(self, settings_module: str | None, chained: tuple[Callable[..., object], ...]):
        self.settings_module = settings_module
        self.chained = chained

    def __call__(self, *initargs: Any) -> None:
        _setup_django(self.settings_module)
        _close_at_child_exit()
        for init in self.chained:
            init(*initargs)

    def __repr__(self) -> str:
        names = ", ".join(getattr(f, "__qualname__", repr(f)) for f in self.chained)
        return f"forksafe.pools.initializer({names})"


def initializer(*chained: Callable[..., object]) -> Callable[..., None]:
    """A pool initializer that sets Django up in the worker and closes its sessions at exit.

    For pools forksafe does not build: ``multiprocessing.Pool(initializer=
    forksafe.pools.initializer())``, ``concurrent.futures.ProcessPoolExecutor(
    initializer=forksafe.pools.initializer(my_init), initargs=(...))``. In each worker,
    first ``django.setup()`` from the parent's settings module (spawn/forkserver
    children start without Django: ``AppRegistryNotReady``), then the worker's
    connections are set to close when it exits normally (``maxtasksperchild``,
    ``close()``/``join()``, the executor's ``shutdown()``), then each of ``chained`` is
    called in order with the pool's ``initargs``. Call it in the parent: it reads the
    settings module there (``ImproperlyConfigured`` for ``settings.configure()``
    settings, as :func:`forksafe.get_context` does). A chained initializer that is not callable is
    a ``TypeError`` naming it.

    Unlike forksafe's own pools, the worker's target and initializer are unpickled
    before this runs: a module that imports models at the top level cannot be the
    pool's target module (use :func:`cover_children` or forksafe's pools for that).
    """
    for position, init in enumerate(chained, 1):
        if not callable(init):
            raise TypeError(
                f"forksafe.pools.initializer(): chained initializer #{position} must be"
                f" callable, not {init!r}"
            )
    return _Initializer(_settings_module_to_carry(), tuple(chained))


# The key of forksafe's entry in ``current_process()._config``.
_CONFIG_KEY = "forksafe_cover_children"


class _CoverChild:
    """In ``current_process()._config``: unpickled in each spawn/forkserver child first."""

    def __init__(self, settings_module: str | None) -> None:
        self.settings_module = settings_module

    def __reduce__(self) -> tuple[Callable[[str | None], _CoverChild], tuple[str | None]]:
        return (_cover_child, (self.settings_module,))


def _cover_child(settings_module: str | None) -> _CoverChild:
    """While a child unpickles its process object: set Django up; close at exit (later)."""
    _setup_django(settings_module)
    # The child's _bootstrap clears the finalizers before the target runs, then calls
    # the after-fork callbacks: register the exit closing from there.
    multiprocessing.util.register_after_fork(_COVER_ANCHOR, _after_bootstrap)
    return _CoverChild(settings_module)  # grandchildren are covered too


class _Anchor:
    """A long-lived object for ``register_after_fork`` (its registry holds values weakly)."""


_COVER_ANCHOR = _Anchor()


def _after_bootstrap(_: object) -> None:
    _close_at_child_exit()


def cover_children(enabled: bool = True) -> None:
    """Make every plain multiprocessing child this process starts from now on forksafe.

    Opt-in, for third-party code that builds ``multiprocessing.Pool`` /
    ``ProcessPoolExecutor`` / ``Process`` itself (Python 3.14 makes ``forkserver`` the
    default start method on Linux): in each spawn/forkserver child, Django is set up
    from this process's settings module before the child's target, arguments and
    initializer are unpickled (so modules that import models at the top level work),
    and the child's connections are closed when it exits normally. Fork children are
    left to :func:`forksafe.install`'s fork hooks. ``cover_children(False)`` stops it.

    Raises ``ImproperlyConfigured`` when the settings came from ``settings.configure()``.
    """
    # How: every BaseProcess copies current_process()._config when it is created, and
    # spawn/forkserver pickle the process object, _config first (set in __init__ before
    # the target and args), for the child to unpickle before it bootstraps:
    # https://github.com/python/cpython/blob/v3.11.7/Lib/multiprocessing/process.py#L80-L94
    # ("Everything in self._config will be inherited by descendant processes", L414).
    # An entry there whose unpickling sets Django up runs in every child, for every pool
    # class, start method and library version, with no monkeypatching of multiprocessing.
    # A forkserver preload module would set Django up only once, in the server, and never
    # for spawn; the preparation data (spawn.get_preparation_data) is a fixed set of keys
    # that the child's prepare() reads, with no place for ours. The exit closing goes
    # through util.register_after_fork: _bootstrap clears the finalizers that unpickling
    # registered, then runs the after-fork callbacks (util.py, _run_after_forkers).
    config: dict[str, Any] = multiprocessing.process.current_process()._config  # type: ignore[attr-defined]
    if enabled:
        config[_CONFIG_KEY] = _CoverChild(_settings_module_to_carry())
    else:
        config.pop(_CONFIG_KEY, None)
