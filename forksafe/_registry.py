"""Every Django ``DatabaseWrapper`` that holds a connection, in every thread.

Django keeps one wrapper per alias *per thread* in a ``threading.local``
(``connections._connections``), so from one thread there is no way to see the
others' wrappers -- and in a forked child the other threads' ``threading.local``
data is dropped by CPython, leaving their wrappers to the child's cyclic GC.
This registry sees them all:

* it listens to Django's ``connection_created`` signal, which every backend
  sends at the end of ``connect()``, in the connecting thread;
* when tracking starts late (``install()`` after connections were opened), it
  finds the existing wrappers once (:func:`_existing_wrappers`: no scan at all
  before a backend was loaded, and no lazy object evaluated).

Each entry keeps a weak reference to the wrapper (the registry never keeps a
wrapper alive), the pid of the process that opened the connection, the thread
that owns the wrapper, and a *strong* reference to the raw DB-API connection.
The strong reference is what makes the child safe even when the GC gets to an
inherited wrapper before any hook ran (uWSGI forks in C and runs Python hooks
later): the weakref callback then sees a foreign pid and points the socket at
``/dev/null`` before letting the raw connection go. mysqlclient is the driver
that needs this: its deallocation sends ``COM_QUIT`` without checking the pid.

Entries are also indexed by ``(pid, thread_id)`` (:func:`entries_of_thread`),
so that a thread can find its own connections in O(1) -- ``forksafe.threads``
does it between two executor tasks and when a thread ends. The index is a
hint kept beside ``_entries``, which is the truth: a lookup returns only
entries that are still current there.

No lock is used: every mutation is a single ``dict`` operation, atomic under
the GIL, so a fork can never leave the child waiting for a lock that a thread
of the parent held.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forksafe import _drivers

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "PID_ATTRIBUTE",
    "UNKNOWN_PID",
    "Entry",
    "closed",
    "changes",
    "entries",
    "entries_of_thread",
    "in_use",
    "inherited",
    "note_bypassed",
    "note_detached",
    "register",
    "set_change_hook",
    "set_connect_hook",
    "start_tracking",
    "stats",
    "take_inherited",
]


PID_ATTRIBUTE = "_forksafe_pid"
"""The wrapper attribute holding the pid of the process that opened its connection.

Stamped by :func:`register`; read by the check before each use (``forksafe._guard``).
"""


@dataclass(eq=False)
class Entry:
    """What the registry knows about one connected wrapper."""

    wrapper_ref: weakref.ref[BaseDatabaseWrapper]
    alias: str
    raw: Any
    pid: int
    thread_id: int
    vendor: str
    driver: str = field(init=False)
    # Unique in this process, increasing: tells entries of a thread that ended
    # from those of a later thread that got the same ident.
    seq: int = field(init=False, repr=False)
    # sys.getrefcount(raw) with nothing using it, measured at registration; see in_use().
    idle_refs: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.driver = _drivers.driver_of(self.raw)
        self.seq = next(_seq)

    @property
    def wrapper(self) -> BaseDatabaseWrapper | None:
        return self.wrapper_ref()


_entries: dict[int, Entry] = {}
# (pid, thread_id) -> {key: entry}: the same entries, by owning thread.
_by_thread: dict[tuple[int, int], dict[int, Entry]] = {}
_prune_at = 256  # buckets before empty ones are dropped; doubles when few are empty
_seq = itertools.count()  # next() is atomic under the GIL
# Bumped whenever the per-thread index changes: a thread may cache its own lookup
# until then (see changes()). A lost increment between two threads still changes it.
_changes = 0
_readers: tuple[Callable[[], int], ...] | None = None  # socket_readers(), made lazily
# Called after every change of the entries (forksafe._fork: what its fork hooks computed is stale).
_change_hook: Callable[[], None] | None = None
_tracking = False
_connect_hook: Callable[[BaseDatabaseWrapper], None] | None = None
# Per alias, in this process only (a forked child starts from zero).
_opened: Counter[str] = Counter()
_detached: Counter[str] = Counter()
_bypassed: Counter[str] = Counter()


def _changed() -> None:
    global _changes, _readers
    _changes += 1
    _readers = None  # they reference the connections: let a dropped one go
    hook = _change_hook
    if hook is not None:
        hook()


def _index(key: int, entry: Entry) -> None:
    _changed()
    thread = (entry.pid, entry.thread_id)
    bucket = _by_thread.setdefault(thread, {})
    bucket[key] = entry
    if _by_thread.get(thread) is not bucket:  # pruned meanwhile by another thread
        _by_thread.setdefault(thread, {})[key] = entry


def _unindex(key: int, entry: Entry) -> None:
    _changed()
    bucket = _by_thread.get((entry.pid, entry.thread_id))
    if bucket is not None and bucket.get(key) is entry:
        bucket.pop(key, None)


def _prune() -> None:
    """Drop empty buckets (threads that ended and whose wrappers were collected)."""
    global _prune_at
    for thread, bucket in list(_by_thread.items()):
        if bucket:
            continue
        popped = _by_thread.pop(thread, None)
        # Another thread may have indexed into it meanwhile: put it back.
        for again in (bucket, popped):
            if again:
                current = _by_thread.setdefault(thread, again)
                if current is not again:
                    current.update(again)
    _prune_at = max(256, 2 * len(_by_thread))


def _on_wrapper_collected(key: int) -> None:
    entry = _entries.pop(key, None)
    if entry is not None:
        _unindex(key, entry)
    if entry is not None and entry.pid != os.getpid():
        # Collected in a child before the reset ran: detach before the raw
        # connection's own deallocation can say goodbye on the shared socket.
        _drivers.detach(entry.raw, owned=False, alias=entry.alias)


def _collected_callback(key: int) -> Callable[[weakref.ref[BaseDatabaseWrapper]], None]:
    def callback(_ref: weakref.ref[BaseDatabaseWrapper]) -> None:
        _on_wrapper_collected(key)

    return callback


def register(wrapper: BaseDatabaseWrapper, *, pid: int | None = None) -> None:
    """Record that ``wrapper`` holds a (new) connection, opened by ``pid``.

    ``pid`` defaults to this process.
    """
    raw = wrapper.connection
    if raw is None:
        return
    key = id(wrapper)
    old = _entries.get(key)
    if old is not None and old.wrapper is wrapper:
        ref = old.wrapper_ref
    else:
        ref = weakref.ref(wrapper, _collected_callback(key))
    if pid is None or pid == os.getpid():
        _opened[wrapper.alias] += 1
    entry = Entry(
        wrapper_ref=ref,
        alias=wrapper.alias,
        raw=raw,
        pid=os.getpid() if pid is None else pid,
        # Set by BaseDatabaseWrapper.__init__: the thread that owns the wrapper.
        thread_id=getattr(wrapper, "_thread_ident", 0),
        vendor=wrapper.vendor,
    )
    _entries[key] = entry
    if old is not None:
        _unindex(key, old)
    if (entry.pid, entry.thread_id) not in _by_thread and len(_by_thread) >= _prune_at:
        _prune()
    _index(key, entry)
    # Read by the pid check before each use of the wrapper (forksafe._guard).
    wrapper.__dict__[PID_ATTRIBUTE] = entry.pid
    # References now: ``raw`` here, ``entry.raw``, ``wrapper.connection``, the
    # argument, and whatever the driver keeps itself. in_use() counts the same.
    entry.idle_refs = sys.getrefcount(raw)


def in_use(entry: Entry) -> bool:
    """Whether something holds ``entry``'s connection besides its wrapper: a cursor, mostly.

    Every DB-API cursor keeps a reference to its connection (psycopg, psycopg2,
    mysqlclient, PyMySQL, sqlite3), so a reference count above the one measured
    when the connection was registered means an open cursor -- a result being
    read, an ``.iterator()`` -- or code holding the raw connection. Wrong only
    on the safe side: a leftover cursor nobody reads keeps the connection open.
    """
    raw = entry.raw
    return sys.getrefcount(raw) > entry.idle_refs


def closed(wrapper: BaseDatabaseWrapper) -> None:
    """``wrapper`` closed its connection: drop its entry, which must not keep it alive."""
    key = id(wrapper)
    entry = _entries.get(key)
    if (
        entry is not None
        and entry.wrapper is wrapper
        and wrapper.connection is not entry.raw
        and _entries.pop(key, None) is entry
    ):
        _unindex(key, entry)


def _on_connection_created(
    sender: object, connection: BaseDatabaseWrapper, **kwargs: object
) -> None:
    register(connection)
    hook = _connect_hook
    if hook is not None:
        hook(connection)


def set_change_hook(hook: Callable[[], None] | None) -> None:
    """Call ``hook()`` after every change of the entries, in the thread that made it."""
    global _change_hook
    _change_hook = hook


def set_connect_hook(hook: Callable[[BaseDatabaseWrapper], None] | None) -> None:
    """Call ``hook(wrapper)`` after registering each new connection (``None``: no hook).

    The hook runs in the thread that connected, right after the entry is
    recorded; an exception it raises propagates out of Django's ``connect()``.
    One hook at a time: ``forksafe.threads`` uses it to give a thread its
    guard at the thread's first connection.
    """
    global _connect_hook
    _connect_hook = hook


UNKNOWN_PID = -1
"""The pid recorded for connections found after a fork by a late start of tracking."""


def start_tracking(*, existing_pid: int | None = None) -> None:
    """Connect the signal receiver and pick up wrappers connected before. Idempotent.

    ``existing_pid`` is the pid recorded for the wrappers found already
    connected; :data:`UNKNOWN_PID` marks them as inherited (a child that starts
    tracking only after the fork cannot know who opened them).
    """
    global _tracking
    if _tracking:
        return
    from django.db.backends.signals import connection_created

    connection_created.connect(_on_connection_created, weak=False, dispatch_uid="forksafe.registry")
    _tracking = True
    for wrapper in _existing_wrappers():
        if wrapper.connection is not None:
            register(wrapper, pid=existing_pid)


def _existing_wrappers() -> list[BaseDatabaseWrapper]:
    """Every ``DatabaseWrapper`` alive in this process, of every thread; no settings read.

    No wrapper can exist before a backend's ``DatabaseWrapper`` class was defined
    (``django.db.backends.<vendor>.base``, imported at the first use of an
    alias), so at the top of ``manage.py``, ``wsgi.py`` or the settings module
    nothing is scanned. Otherwise one pass over the objects the cyclic GC
    tracks (other threads' wrappers are reachable from no other place). It
    compares ``type(obj)``, never ``isinstance()``: ``isinstance()`` reads
    ``__class__``, which evaluates a lazy object -- ``django.conf.settings``
    (``ImproperlyConfigured`` before ``DJANGO_SETTINGS_MODULE`` is set) and
    every ``SimpleLazyObject`` alive.
    """
    base = sys.modules.get("django.db.backends.base.base")
    if base is None:
        return []
    classes = set(_subclasses(base.BaseDatabaseWrapper))
    if not classes:
        return []
    return [obj for obj in gc.get_objects() if type(obj) in classes]


def _subclasses(cls: type[Any]) -> Iterator[type[Any]]:
    sub: type[Any]
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def entries() -> list[Entry]:
    """A snapshot of every entry, whatever process opened it."""
    return list(_entries.values())


def socket_readers() -> tuple[Callable[[], int], ...]:
    """A socket reader (``_drivers.socket_reader``) for every entry that has a socket.

    Made again only after the registry changed, and dropped when an entry is
    removed (a reader references its connection): a process that forks often
    makes them once, and a connection that its wrapper drops is not kept.
    """
    global _readers
    readers = _readers
    if readers is None:
        made = (_drivers.socket_reader(e.raw, e.driver) for e in list(_entries.values()))
        readers = _readers = tuple(reader for reader in made if reader is not None)
    return readers


def changes() -> int:
    """A number that changes whenever :func:`entries_of_thread` may answer differently.

    Lets a thread keep the answer for its own (pid, thread) until then: an
    executor worker looks its connections up between every two tasks.
    """
    return _changes


def entries_of_thread(pid: int, thread_id: int) -> list[Entry]:
    """The entries of wrappers owned by thread ``thread_id`` whose connection ``pid`` opened.

    O(number of such entries). Meant for the owning thread itself (between
    two tasks, when it ends); other threads may see a snapshot that is
    already out of date.
    """
    bucket = _by_thread.get((pid, thread_id))
    if not bucket:
        return []
    return [entry for key, entry in list(bucket.items()) if _entries.get(key) is entry]


def inherited() -> Iterator[Entry]:
    """Entries whose connection was opened by another (parent) process."""
    pid = os.getpid()
    return (e for e in entries() if e.pid != pid)


def take_inherited() -> list[Entry]:
    """In a forked child: remove the entries of connections another process opened; return them.

    The registry starts afresh in one step instead of forgetting entries one
    by one, and the parent's entries (with the wrappers' weak references and
    the raw connections they hold) are parked, never freed: they sit in pages
    shared copy-on-write with the parent, and freeing them would write there.
    Entries of connections this process opened itself (before its reset ran)
    stay registered. The counts of :func:`stats` start from zero: the parent's
    are not this process's.
    """
    global _entries, _by_thread
    _changed()
    for counts in (_opened, _detached, _bypassed):
        if counts:  # usually only _opened has counts: no call for the others
            counts.clear()
    pid = os.getpid()
    _drivers.park((_entries, _by_thread))
    old = _entries
    _entries = {}
    _by_thread = {}
    taken = []
    for key, entry in old.items():
        if entry.pid == pid:
            _entries[key] = entry
            _index(key, entry)
        else:
            taken.append(entry)
    return taken


def note_detached(alias: str) -> None:
    """Count one inherited connection of ``alias`` detached in this process."""
    # dict.get, not Counter's __missing__: a Python call less in a forked child.
    _detached[alias] = _detached.get(alias, 0) + 1


def note_bypassed(alias: str) -> None:
    """Count one inherited connection of ``alias`` found only at its first use (no hook ran)."""
    _bypassed[alias] += 1


def stats() -> dict[str, dict[str, int]]:
    """Connections of this process by alias: ``opened``, ``open``, ``closed``, ``detached``...

    ``opened`` counts Django's ``connect()`` calls in this process since
    tracking started (plus connections found open when it started); ``open``
    those whose wrapper still holds them; ``closed`` the difference (closed by
    Django, returned to a native pool, or collected); ``detached`` inherited
    connections dropped after a fork; ``bypasses`` those of them that no fork
    hook reset, found by the pid check at their first use (uWSGI without
    ``master``, ``fork()`` from C...). Covers every thread. An alias with a
    connection pool in this process adds its figures, prefixed ``pool_``
    (``pool_size``, ``pool_idle``, ``pool_in_use``, ``pool_max_size``, and where the
    pool counts them ``pool_waits`` and ``pool_timeouts``: ``_drivers.pool_figures``).
    """
    pid = os.getpid()
    still_open: Counter[str] = Counter()
    for entry in entries():
        wrapper = entry.wrapper
        if entry.pid == pid and wrapper is not None and wrapper.connection is entry.raw:
            still_open[entry.alias] += 1
    pools = _drivers.pool_figures()
    aliases = sorted(set(_opened) | set(_detached) | set(_bypassed) | set(still_open) | set(pools))
    return {
        alias: {
            "opened": _opened[alias],
            "open": still_open[alias],
            "closed": max(_opened[alias] - still_open[alias], 0),
            "detached": _detached[alias],
            "bypasses": _bypassed[alias],
            **{f"pool_{key}": value for key, value in pools.get(alias, {}).items()},
        }
        for alias in aliases
    }
