"""A process closes its own connections and native pool when it exits normally.

Judged by the server's abandoned-session counter: forksafe's pool workers (which end with
``os._exit``) and a raw ``os.fork()`` child that ends with ``sys.exit()``. The psycopg runs
also use the ``pooled`` alias (Django's native pool, ``min_size`` 2) in the children.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

import forksafe
from forksafe._sessions import backend_id
from tests.harness.queues import mode_env, require_heavy_driver, worker_env
from tests.harness.scripts import run_python
from tests.harness.sessions import settled_abandoned


def _aliases(driver: str) -> list[str]:
    return ["default", "pooled"] if driver == "psycopg" else ["default"]


def use_aliases(aliases: list[str]) -> int:
    """Query each alias in this (worker) process."""
    for alias in aliases:
        backend_id(alias)
    return os.getpid()


def _target(aliases: list[str]) -> None:
    use_aliases(aliases)


def test_pool_process_and_executor_workers_abandon_no_session(db: None, driver: str) -> None:
    require_heavy_driver(driver)
    aliases = _aliases(driver)
    before = settled_abandoned()
    ctx = forksafe.get_context("fork")
    with ctx.Pool(2, maxtasksperchild=2) as pool:
        pool.map_async(use_aliases, [aliases] * 5, chunksize=1).get(timeout=60)
        pool.close()
        pool.join()
    proc = ctx.Process(target=_target, args=(aliases,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    with forksafe.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        list(ex.map(use_aliases, [aliases] * 4, timeout=60))
    assert settled_abandoned() == before


_RAW_FORK = """
import json, os, sys, time, django
django.setup()
from django.db import connections
from forksafe._sessions import backend_id
aliases = json.loads(sys.argv[1])
parent = backend_id()
connections.close_all()  # plain Django would share the session with the child
pid = os.fork()
if pid == 0:
    for alias in aliases:
        backend_id(alias)
    sys.exit(0)  # a normal exit: atexit runs
deadline = time.monotonic() + 60
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done or time.monotonic() > deadline:
        break
    time.sleep(0.05)
if not done:
    os.kill(pid, 9)
print(json.dumps(dict(exited=bool(done), status=status, parent_works=backend_id() > 0)))
"""


def _raw_fork(driver: str, aliases: list[str], **env: str) -> dict[str, Any]:
    env = worker_env(driver, **env)
    result: dict[str, Any] = run_python("-c", _RAW_FORK, json.dumps(aliases), env=env)
    assert result["exited"] and result["status"] == 0 and result["parent_works"], result
    return result


def test_raw_fork_child_exiting_normally_closes_its_sessions_and_native_pool(
    db: None, driver: str
) -> None:
    require_heavy_driver(driver)
    before = settled_abandoned()
    _raw_fork(driver, _aliases(driver))
    assert settled_abandoned() == before


_MAIN_EXIT = """
import os, sys, django
django.setup()
import forksafe
from forksafe._sessions import backend_id
if sys.argv[1] == "forksafe":
    forksafe.install()
for alias in sys.argv[2:]:
    backend_id(alias)
print("{}")  # then the interpreter exits: atexit runs
"""


def _main_exit(driver: str, mode: str) -> int:
    before = settled_abandoned()
    env = worker_env(driver, **mode_env(plain=mode == "plain", conn_max_age=None))
    run_python("-c", _MAIN_EXIT, mode, *_aliases(driver), env=env)
    after = settled_abandoned()
    assert before is not None and after is not None
    return after - before


def test_the_process_that_installed_forksafe_says_goodbye_when_it_exits(
    db: None, driver: str
) -> None:
    if driver == "sqlite3":
        pytest.skip("SQLite has no server to say goodbye to")
    assert _main_exit(driver, "forksafe") == 0


def test_control_plain_pymysql_leaves_its_goodbye_to_the_garbage_collector(
    db: None, driver: str
) -> None:
    """PyMySQL sends nothing when its connection is collected at interpreter exit."""
    if driver != "pymysql":
        pytest.skip("the drivers written in C say goodbye when collected")
    assert _main_exit(driver, "plain") == 1
