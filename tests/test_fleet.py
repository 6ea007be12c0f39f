"""The fleet budget: the fleet file, the demand per group, and every limit on the way.

Pure computation (the limits are handed in); ``test_doctor.py`` and
``test_pgbouncer.py`` run ``forksafe doctor --fleet`` against real servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forksafe._fleet import FleetError, Group, budget, demand, load, parse, pool_size, render
from forksafe._pooler import Pool, Pooler

pytestmark = pytest.mark.nodb

ALIASES = ["default", "other", "pooled"]
DATABASES: dict[str, dict[str, Any]] = {
    "default": {"NAME": "app", "CONN_MAX_AGE": 0},
    "other": {"NAME": "app", "CONN_MAX_AGE": 60},
    "pooled": {"NAME": "app", "OPTIONS": {"pool": {"min_size": 2, "max_size": 4}}},
}


def _error(data: Any) -> str:
    with pytest.raises(FleetError) as info:
        parse(data, ALIASES, "fleet.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("fleet.toml: "), message
    return message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"group": {}}, "expected a 'groups' table"),
        ({"groups": {"web": {"processes": 2}}, "limits": {}}, "unknown key 'limits'"),
        ({"groups": {}}, "'groups' is empty"),
        ({"groups": {"web": {"procs": 2}}}, "group 'web': unknown key 'procs'"),
        ({"groups": {"web": {"processes": -1}}}, "processes must be a whole number >= 0, not -1"),
        ({"groups": {"web": {"processes": 2.5}}}, "processes must be a whole number >= 0, not 2.5"),
        ({"groups": {"web": {"processes": "4"}}}, "processes must be a whole number >= 0, not '4'"),
        (
            {"groups": {"web": {"processes": True}}},
            "processes must be a whole number >= 0, not True",
        ),
        ({"groups": {"web": {"processes": 2, "hosts": 0}}}, "hosts must be a whole number >= 1"),
        (
            {"groups": {"web": {"processes": 2, "threads": 0}}},
            "threads must be a whole number >= 1",
        ),
        ({"groups": {"web": {"threads": 8}}}, "group 'web': runs nothing"),
        ({"groups": {"web": {"rq": 1, "aliases": ["nope"]}}}, "unknown alias 'nope'"),
        ({"groups": {"web": {"rq": 1, "aliases": "default"}}}, "aliases must be a list"),
        ({"groups": {"web": 3}}, "group 'web': expected a table"),
    ],
)
def test_bad_fleet_file_is_one_line_that_names_the_mistake(data: Any, expected: str) -> None:
    assert expected in _error(data)


def test_unreadable_or_undecodable_files_are_one_line(tmp_path: Path) -> None:
    for name, text, expected in [
        ("fleet.toml", "[groups.web\n", "not valid TOML"),
        ("fleet.json", "{", "not valid JSON"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(FleetError, match=expected) as info:
            load(tmp_path / name, ALIASES)
        assert "\n" not in str(info.value)
    with pytest.raises(FleetError, match="cannot read the fleet file"):
        load(tmp_path / "missing.toml", ALIASES)


def test_toml_and_json_give_the_same_groups(tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text(
        '[groups.web]\nhosts = 3\nprocesses = 4\nthreads = 2\naliases = ["default"]\n'
        "[groups.tasks]\ncelery = 8\nrq = 2\n"
    )
    (tmp_path / "f.json").write_text(
        '{"groups": {"web": {"hosts": 3, "processes": 4, "threads": 2, "aliases": ["default"]},'
        ' "tasks": {"celery": 8, "rq": 2}}}'
    )
    expected = [
        Group("web", hosts=3, processes=4, threads=2, aliases=("default",)),
        Group("tasks", celery=8, rq=2),
    ]
    assert load(tmp_path / "f.toml", ALIASES) == expected
    assert load(tmp_path / "f.json", ALIASES) == expected


def test_demand_counts_hosts_processes_threads_workers_aliases_and_native_pools() -> None:
    web = Group("web", hosts=3, processes=4, threads=2, aliases=("default", "other"))
    assert demand([web], DATABASES, ALIASES) == (3 * 4 * 2 * 2, "3 host(s) x 4 x 2 x 2 alias(es)")
    # A Celery child and an RQ worker: one thread each; a native pool holds its min_size.
    tasks = Group("tasks", celery=8, rq=2)
    n, formula = demand([tasks], DATABASES, ALIASES)
    assert n == 8 * 2 + 8 * 2 + 2 * 2 + 2 * 2
    assert formula == (
        "8 x 1 x 2 alias(es) + 8 x pool 2 ('pooled') + 2 x 1 x 2 alias(es) + 2 x pool 2 ('pooled')"
    )
    # The single-host report is the same function with one group of one host.
    here = Group("this host", processes=3, threads=5)
    assert demand([here], DATABASES, ALIASES) == (
        3 * 5 * 2 + 3 * 4,
        "3 x 5 x 2 alias(es) + 3 x pool 4 ('pooled')",
    )


def _pooler(mode: str, pool_size: int = 20, max_db: int = 0) -> Pooler:
    pooler = Pooler(
        address="pgb:6432",
        version="PgBouncer 1.18.0",
        pool_mode=mode,
        max_client_conn=100,
        default_pool_size=pool_size,
        max_db_connections=max_db,
        max_user_connections=0,
        server_idle_timeout=600,
        client_idle_timeout=0,
        ignore_startup_parameters="",
        clients=0,
    )
    pooler.pools["app"] = Pool("app", "u", mode, pool_size, 0, max_db, "db:5432", "app", 0, 0, 0)
    return pooler


def test_budget_puts_a_pooler_between_clients_and_the_server() -> None:
    groups = [Group("web", hosts=4, processes=4, threads=2), Group("tasks", celery=10)]
    databases = {"default": DATABASES["default"], "direct": DATABASES["other"]}
    servers = {"default": ("postgresql", "pgb:6432"), "direct": ("postgresql", "db:5432")}
    rows = budget(
        groups, databases, servers, {"db:5432": 100}, {"pgb:6432": _pooler("transaction")}
    )
    by_target = {(r.target.strip(), r.limit_name): r for r in rows}
    clients = by_target["pgbouncer pgb:6432", "max_client_conn"]
    assert clients.demand == 4 * 4 * 2 + 10 == 42 and clients.verdict == "ok"
    assert clients.groups == {"web": 32, "tasks": 10}
    pool = by_target["pool app (transaction)", "pool_size + reserve_pool"]
    assert (pool.demand, pool.limit, pool.verdict) == (42, 20, "queues")  # pooling, not failing
    server = by_target["postgresql db:5432", "max_connections"]
    # 42 direct sessions from the 'direct' alias + at most 20 server connections of the pool.
    assert server.demand == 42 + 20 and "20 from pgbouncer pgb:6432" in server.formula.split(" + ")
    assert not any(r.exceeded for r in rows)
    assert "Every limit holds." in render(rows, groups)


def test_budget_flags_each_exceeded_limit() -> None:
    groups = [Group("web", hosts=20, processes=4, threads=2)]
    databases = {"default": DATABASES["other"]}  # CONN_MAX_AGE 60: persistent
    servers = {"default": ("postgresql", "pgb:6432")}
    rows = budget(groups, databases, servers, {"db:5432": 10}, {"pgb:6432": _pooler("session")})
    exceeded = [(r.target.strip(), r.limit_name) for r in rows if r.exceeded]
    assert exceeded == [
        ("pgbouncer pgb:6432", "max_client_conn"),  # 160 clients > 100
        ("pool app (session)", "pool_size + reserve_pool"),  # persistent clients keep servers
        ("postgresql db:5432", "max_connections"),  # 20 server connections > 10
    ]
    text = render(rows, groups)
    assert "3 limit(s) exceeded." in text and "EXCEEDS" in text
    direct = budget(groups, databases, {"default": ("postgresql", "db:5432")}, {"db:5432": 200}, {})
    assert [(r.demand, r.limit, r.exceeded) for r in direct] == [(160, 200, False)]


def test_the_readme_example_is_a_valid_fleet_file(tmp_path: Path) -> None:
    # The example lives in the docs site's fleet guide (it was the README's).
    guide = (Path(__file__).resolve().parent.parent / "docs/guides/fleet.md").read_text()
    section = guide.split("# Sizing a fleet", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "fleet.toml").write_text(example)
    groups = load(tmp_path / "fleet.toml", ["default"])
    assert [g.name for g in groups] == ["web", "celery"]
    assert demand(groups, {"default": {}}, ["default"])[0] == 6 * 8 * 4 + 3 * (16 + 2)


def test_a_pool_size_follows_the_engine_that_provides_the_pool() -> None:
    mysql = {"ENGINE": "forksafe.backends.mysql", "OPTIONS": {"pool": True}}
    # forksafe's pool: min_size 0 and max_size 10 by default; it grows with the threads.
    assert pool_size(mysql, threads=4) == 4
    assert pool_size(mysql, threads=40) == 10
    sized = {**mysql, "OPTIONS": {"pool": {"min_size": 3, "max_size": 6}}}
    assert pool_size(sized, threads=1) == 3
    # django-db-connection-pool: POOL_SIZE + MAX_OVERFLOW (10 + 10 by default).
    dbcp = {"ENGINE": "dj_db_conn_pool.backends.mysql"}
    assert pool_size(dbcp, threads=64) == 20
    capped = {**dbcp, "POOL_OPTIONS": {"POOL_SIZE": 8, "MAX_OVERFLOW": 0}}
    assert pool_size(capped, threads=64) == 8
    assert pool_size({"ENGINE": "django.db.backends.mysql"}, threads=64) is None
