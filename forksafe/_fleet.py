"""Worst-case database sessions of a deployment: this host, or a fleet of hosts.

One computation serves both reports of ``forksafe doctor``: :func:`demand` is
what the processes, threads, Celery children and RQ workers of some groups of
hosts can open through some ``DATABASES`` aliases at once; :func:`budget` puts
that against every limit on the way (PgBouncer's ``max_client_conn`` and pool
sizes, the database server's ``max_connections``). No I/O here: the callers
read the limits and hand them in.

A fleet file (TOML or JSON) names groups of hosts::

    [groups.web]
    hosts = 4          # identical hosts in the group (default 1)
    processes = 8      # web worker processes per host
    threads = 4        # threads per web worker process (default 1)
    aliases = ["default"]   # DATABASES aliases they use (default: all)

    [groups.tasks]
    hosts = 2
    celery = 16        # Celery concurrency per host (prefork children or threads)
    rq = 2             # RQ workers per host (each runs one job at a time)
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forksafe._pooler import Pooler

__all__ = ["FleetError", "Group", "Row", "budget", "demand", "load", "pool_size", "render"]

_COUNTS = {"hosts": 1, "processes": 0, "threads": 1, "celery": 0, "rq": 0}
_KEYS = (*_COUNTS, "aliases")


class FleetError(ValueError):
    """A fleet file that cannot be used; the message is one line that says what to fix."""


@dataclass(frozen=True)
class Group:
    """Identical hosts: per host ``processes`` x ``threads``, ``celery`` and ``rq`` workers."""

    name: str
    hosts: int = 1
    processes: int = 0
    threads: int = 1
    celery: int = 0
    rq: int = 0
    aliases: tuple[str, ...] | None = None  # None: every alias

    def units(self) -> list[tuple[int, int, str]]:
        """(processes per host, threads per process, what they are) with a count above 0.

        A Celery child and an RQ work horse run one task at a time: one thread.
        """
        units = [
            (self.processes, self.threads, "process(es)"),
            (self.celery, 1, "Celery worker(s)"),
            (self.rq, 1, "RQ worker(s)"),
        ]
        return [u for u in units if u[0] > 0]

    def uses(self, alias: str) -> bool:
        return self.aliases is None or alias in self.aliases


def pool_size(db: Mapping[str, Any], threads: int) -> int | None:
    """Sessions one process's pool of an alias can hold; None without a pool.

    Django 5.1+ native pool (``OPTIONS["pool"]``, psycopg_pool): ``min_size`` are open
    from the start, beyond that the pool grows only to what the threads check out at
    once, up to ``max_size`` (defaults 4 and ``min_size``). forksafe's pool
    (``forksafe.backends.*`` without psycopg 3): the same with defaults 0 and 10.
    django-db-connection-pool (``dj_db_conn_pool.backends.*``): up to ``POOL_SIZE`` +
    ``MAX_OVERFLOW`` (defaults 10 and 10).
    """
    engine = str(db.get("ENGINE") or "")
    if engine.startswith("dj_db_conn_pool."):
        options = db.get("POOL_OPTIONS") or {}
        ceiling = int(options.get("POOL_SIZE", 10)) + max(int(options.get("MAX_OVERFLOW", 10)), 0)
        return min(threads, ceiling)
    options = db.get("OPTIONS") or {}
    pool = options.get("pool") if isinstance(options, dict) else None
    if not pool:
        return None
    pool = pool if isinstance(pool, dict) else {}
    if engine.startswith("forksafe.backends.") and not _native_pool(engine):
        min_size = int(pool.get("min_size", 0))
        max_size = int(pool.get("max_size", 10))
    else:
        min_size = int(pool.get("min_size", 4))
        max_size = int(pool.get("max_size") or min_size)
    return max(min_size, min(threads, max_size))


def _native_pool(engine: str) -> bool:
    """Whether forksafe's backend ``engine`` defers to Django's native pool (psycopg 3)."""
    if not engine.endswith(".postgresql"):
        return False
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:  # neither driver: nothing will connect, the size does not matter
        return False
    return bool(is_psycopg3)


def demand(
    groups: Iterable[Group], databases: Mapping[str, Mapping[str, Any]], aliases: Iterable[str]
) -> tuple[int, str]:
    """Worst-case sessions ``groups`` open through ``aliases`` at once, and how.

    Per process: one session per thread and alias, or a native pool's size.
    """
    total, parts = 0, []
    aliases = list(aliases)
    for group in groups:
        used = [a for a in aliases if group.uses(a)]
        hosts = f"{group.hosts} host(s) x " if group.hosts > 1 else ""
        for count, threads, _ in group.units():
            plain = [a for a in used if pool_size(databases[a], threads) is None]
            if plain:
                total += group.hosts * count * threads * len(plain)
                parts.append(f"{hosts}{count} x {threads} x {len(plain)} alias(es)")
            for alias in used:
                size = pool_size(databases[alias], threads)
                if size is not None:
                    total += group.hosts * count * size
                    parts.append(f"{hosts}{count} x pool {size} ({alias!r})")
    return total, " + ".join(parts) or "nothing uses it"


# --- limits ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One limit on the way to the database, the worst-case demand on it, and the verdict.

    Past a *hard* limit connections fail; past a soft one (a transaction pool's
    size) clients queue for a server connection, as pooling intends.
    """

    target: str  # "postgresql 10.0.0.9:5432", "pgbouncer 10.0.0.5:6432", "  pool app ..."
    limit_name: str
    limit: int | None  # None: unknown
    demand: int
    formula: str = ""
    note: str = ""
    hard: bool = True
    groups: dict[str, int] = field(default_factory=dict)  # demand by group

    @property
    def over(self) -> bool:
        return self.limit is not None and self.demand > self.limit

    @property
    def exceeded(self) -> bool:
        """Demand above a hard limit: connections would fail."""
        return self.hard and self.over

    @property
    def verdict(self) -> str:
        if self.limit is None:
            return "unknown"
        return "EXCEEDS" if self.exceeded else "queues" if self.over else "ok"


def budget(
    groups: list[Group],
    databases: Mapping[str, Mapping[str, Any]],
    servers: Mapping[str, tuple[str, str]],
    max_connections: Mapping[str, int | None],
    poolers: Mapping[str, Pooler],
) -> list[Row]:
    """Every limit the ``groups`` meet on the way to their databases, with the worst case.

    ``servers``: alias -> (vendor, "host:port") as configured in ``DATABASES``;
    ``max_connections``: database server "host:port" -> its ``max_connections``;
    ``poolers``: "host:port" -> :class:`~forksafe._pooler.Pooler` where a
    PgBouncer answers. Its clients meet ``max_client_conn``; each pool opens at
    most ``pool_size`` + ``reserve_pool`` server connections (and at most
    ``max_db_connections``) on the server behind it. Under session pooling with
    persistent connections (``CONN_MAX_AGE`` other than 0) a client keeps its
    server connection, so the pool size is a hard limit there.
    """
    by_address: dict[tuple[str, str], list[str]] = {}
    for alias, key in servers.items():
        by_address.setdefault(key, []).append(alias)
    rows: list[Row] = []
    on_server: dict[tuple[str, str], list[tuple[int, str, dict[str, int]]]] = {}
    for (vendor, address), aliases in by_address.items():
        n, formula = demand(groups, databases, aliases)
        by_group = {g.name: demand([g], databases, aliases)[0] for g in groups}
        pooler = poolers.get(address)
        if pooler is None:
            on_server.setdefault((vendor, address), []).append((n, formula, by_group))
            continue
        rows.append(
            Row(
                f"pgbouncer {address}",
                "max_client_conn",
                pooler.max_client_conn,
                n,
                formula,
                groups=by_group,
            )
        )
        by_db: dict[str, list[str]] = {}
        for alias in aliases:
            by_db.setdefault(str(databases[alias].get("NAME")), []).append(alias)
        for name, db_aliases in by_db.items():
            clients = demand(groups, databases, db_aliases)[0]
            pool = pooler.pools.get(name) or pooler.pools.get("*")
            if pool is None:
                rows.append(
                    Row(
                        f"  pool {name}",
                        "pool_size",
                        None,
                        clients,
                        note="PgBouncer has no such database",
                    )
                )
                continue
            size = pool.pool_size + pool.reserve_pool
            persistent = any(databases[a].get("CONN_MAX_AGE", 0) != 0 for a in db_aliases)
            session = pool.pool_mode == "session"
            rows.append(
                Row(
                    f"  pool {name} ({pool.pool_mode})",
                    "pool_size + reserve_pool",
                    size,
                    clients,
                    note="clients keep their server connection (CONN_MAX_AGE)"
                    if session and persistent
                    else "",
                    hard=session and persistent,
                )
            )
            opened = min(clients, size)
            if pool.max_db_connections:
                rows.append(
                    Row(
                        f"  pool {name}",
                        "max_db_connections",
                        pool.max_db_connections,
                        opened,
                        hard=False,
                    )
                )
                opened = min(opened, pool.max_db_connections)
            part = f"{opened} from pgbouncer {address}"
            on_server.setdefault(("postgresql", pool.server), []).append((opened, part, {}))
    for (vendor, address), parts in on_server.items():
        totals: dict[str, int] = {}
        for _, _, counts in parts:
            for g, k in counts.items():
                totals[g] = totals.get(g, 0) + k
        rows.append(
            Row(
                f"{vendor} {address}",
                "max_connections",
                max_connections.get(address),
                sum(n for n, _, _ in parts),
                " + ".join(f for _, f, _ in parts),
                groups=totals,
            )
        )
    return rows


def render(rows: list[Row], groups: list[Group]) -> str:
    """The budget as a table; the last line says whether every limit holds."""
    table = [("limit on the way", "", "worst case", "limit", "verdict")]
    for row in rows:
        limit = "unknown" if row.limit is None else str(row.limit)
        verdict = f"{row.verdict}: {row.note}" if row.note else row.verdict
        table.append((row.target, row.limit_name, str(row.demand), limit, verdict))
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    lines = [
        "  ".join(
            v.rjust(w) if i in (2, 3) and n else v.ljust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for n, r in enumerate(table)
    ]
    lines.append("")
    for group in groups:
        units = ", ".join(
            f"{c} {what}" + (f" x {t} thread(s)" if t > 1 else "") for c, t, what in group.units()
        )
        aliases = ", ".join(group.aliases) if group.aliases is not None else "every alias"
        shares = ", ".join(
            f"{row.groups[group.name]} on {row.target.strip()}"
            for row in rows
            if row.groups.get(group.name)
        )
        lines.append(
            f"group {group.name}: {group.hosts} host(s), each {units}; {aliases}"
            + (f" -> {shares}" if shares else "")
        )
    if not rows:
        lines.append("No database server in DATABASES (SQLite only): nothing to size.")
    exceeded = [r for r in rows if r.exceeded]
    lines += ["", f"{len(exceeded)} limit(s) exceeded." if exceeded else "Every limit holds."]
    return "\n".join(lines) + "\n"


# --- the fleet file ---------------------------------------------------------------------------


def load(path: str | Path, aliases: Iterable[str]) -> list[Group]:
    """The groups of the fleet file at ``path`` (``.json``: JSON, else TOML).

    ``aliases``: the ``DATABASES`` aliases a group may name. Raises
    :class:`FleetError` with one line naming the file and what to fix.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the fleet file ({exc.strerror})") from None
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise FleetError(f"{path}: not valid {kind}: {exc}") from None
    return parse(data, list(aliases), str(path))


def parse(data: Any, aliases: list[str], source: str = "fleet") -> list[Group]:
    """Groups from the decoded fleet file ``data``; :class:`FleetError` when it is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
        raise FleetError(f"{source}: expected a 'groups' table of named groups ([groups.web] ...)")
    unknown = sorted(set(data) - {"groups"})
    if unknown:
        raise FleetError(f"{source}: unknown key {unknown[0]!r} (only 'groups' is known)")
    if not data["groups"]:
        raise FleetError(f"{source}: 'groups' is empty: name at least one group of hosts")
    return [_group(name, spec, aliases, source) for name, spec in data["groups"].items()]


def _group(name: str, spec: Any, aliases: list[str], source: str) -> Group:
    where = f"{source}: group {name!r}"
    if not isinstance(spec, dict):
        raise FleetError(f"{where}: expected a table of {', '.join(_KEYS)}")
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise FleetError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    counts = {}
    for key, default in _COUNTS.items():
        value = spec.get(key, default)
        least = 1 if key in ("hosts", "threads") else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise FleetError(f"{where}: {key} must be a whole number >= {least}, not {value!r}")
        counts[key] = value
    group_aliases = spec.get("aliases")
    if group_aliases is not None:
        if not isinstance(group_aliases, list) or not all(
            isinstance(a, str) for a in group_aliases
        ):
            raise FleetError(f"{where}: aliases must be a list of DATABASES aliases")
        for alias in group_aliases:
            if alias not in aliases:
                raise FleetError(
                    f"{where}: unknown alias {alias!r} (DATABASES has {', '.join(aliases)})"
                )
        group_aliases = tuple(group_aliases)
    group = Group(name, aliases=group_aliases, **counts)
    if not group.units():
        raise FleetError(f"{where}: runs nothing: give processes, celery or rq")
    return group
