"""``forksafe demo``: run the scenarios, plain Django vs forksafe, and print what was measured.

Every figure comes from a real run: each scenario is a fresh interpreter
(``python -m forksafe._scenarios``) that forks for real and asks the server
which session answered. Without ``--database`` a temporary SQLite file is used.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, TextIO

from forksafe import _scenarios

__all__ = ["main"]


@dataclass(frozen=True)
class _Row:
    title: str
    scenario: str
    exit_path: str
    needs: str = ""  # "server" or "pool"


ROWS = (
    _Row("child runs ORM queries, exits", "fork", "orm"),
    _Row("child calls connections.close_all()", "fork", "close_all"),
    _Row("child exits via sys.exit()", "fork", "sys_exit"),
    _Row("child dies by an uncaught exception", "fork", "exception"),
    _Row("other parent thread holds a connection", "fork_thread", "sys_exit"),
    _Row("fork Pool(2) after the parent queried", "mp_pool", "orm"),
    _Row("50 short threads, joined (forksafe.Thread)", "threads", "orm"),
    _Row("50 threading.Threads (install(threads=True))", "threads_any", "orm"),
    _Row("8-worker executor, 200 tasks, shutdown()", "executor", "orm"),
    _Row("native pool: child calls close_pool()", "fork_pool", "close_pool", needs="pool"),
    _Row("native pool: child runs ORM queries", "fork_pool", "orm", needs="pool"),
)


def _yes_no(value: Any) -> str:
    return {True: "yes", False: "NO", None: "-"}.get(value, str(value))


def _cells(res: dict[str, Any]) -> list[str]:
    parent = _yes_no(res["parent_same_session"])
    if res["parent_error"]:
        parent = "NO (killed)"
    if res.get("thread_same_session") is not None:
        parent += "; thread " + _yes_no(res["thread_same_session"])
    if res.get("pool_lost") is not None:
        parent += f"; pool lost {res['pool_lost']}"
    left = res.get("sessions_left")
    return [parent, _yes_no(res["child_own_session"]), "-" if left is None else str(left)]


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _has_native_pool(url: str) -> bool:
    import django

    _, driver = _scenarios.split_url(url)
    return url.startswith("postgresql") and driver == "psycopg" and django.VERSION >= (5, 1)


def run_demo(database: str | None, out: TextIO = sys.stdout) -> int:
    """Run every demo row that fits ``database``; print the table. Returns an exit code."""
    tmp = None
    if database is None:
        fd, tmp = tempfile.mkstemp(prefix="forksafe-demo-", suffix=".sqlite3")
        os.close(fd)
        database = f"sqlite:///{tmp}"
    try:
        _scenarios.split_url(database)
    except ValueError as exc:
        print(f"forksafe demo: bad --database: {exc}", file=sys.stderr)
        return 2
    shown = database.split("@")[-1] if "@" in database else database
    out.write(f"forksafe demo on {shown}\n")
    out.write(
        "'parent kept session': the parent's own server session still answers after the\n"
        "child is gone. 'child own session': a querying child got a session of its own.\n"
        "'left': server sessions left over once the child exited. forksafe runs with\n"
        "close_before_fork=False here, to show that the parent's open connection survives.\n"
        "Thread rows: 'left' counts the sessions still open once the threads were joined\n"
        "or the executor shut down, without gc.collect(); 'parent' is the main thread.\n\n"
    )
    header = ["scenario", "mode", "parent kept session", "child own session", "left"]
    table = [header]
    pool = _has_native_pool(database)
    try:
        for row in ROWS:
            if row.needs == "pool" and not pool:
                continue
            for mode in ("plain", "forksafe"):
                out.write(f"  running: {row.title} ({mode}) ...\n")
                out.flush()
                res = _scenarios.run(row.scenario, database, exit_path=row.exit_path, mode=mode)
                table.append([row.title, mode, *_cells(res)])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        print(f"forksafe demo: a scenario failed: {first[-1] if first else exc}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            os.unlink(tmp)
    out.write("\n")
    _table(table, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``forksafe demo``."""
    import argparse

    parser = argparse.ArgumentParser(prog="forksafe demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        metavar="URL",
        help="postgresql://user@host/db, mysql://root@host/db (+psycopg2 / +pymysql to pick"
        " the driver); default: a temporary SQLite file",
    )
    args = parser.parse_args(argv)
    return run_demo(args.database)
