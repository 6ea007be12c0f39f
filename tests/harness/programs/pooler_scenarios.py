"""Fork, process-pool and thread scenarios through a connection pooler, in a fresh interpreter.

    python -m tests.harness.programs.pooler_scenarios fork|pool|threads --database URL --mode MODE

``MODE``: ``plain`` (forksafe not even imported), ``forksafe`` (``install()``),
``detach`` (``install(close_before_fork=False)``: the parent keeps its
connection across every fork). Prints one JSON object on its last line.

The identity of a client connection to the pooler is its local TCP port:
server-side ids (``pg_backend_pid()``) say nothing under transaction pooling,
where every transaction may run on another server session.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

FORKS = 50
DEADLINE = 20.0  # seconds, for any one child or task


def client_port(alias: str = "default") -> int:
    """The local port of this thread's connection of ``alias`` (connects if needed)."""
    from django.db import connections

    conn = connections[alias]
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
    with socket.socket(fileno=os.dup(conn.connection.fileno())) as sock:
        port: int = sock.getsockname()[1]
        return port


def _open_port() -> int | None:
    """The local port of the open connection of ``default``, None when none is open."""
    from django.db import connection

    if connection.connection is None:
        return None
    with socket.socket(fileno=os.dup(connection.connection.fileno())) as sock:
        port: int = sock.getsockname()[1]
        return port


def _wait(pid: int) -> bool:
    """Wait for child ``pid`` with a deadline; kill it and return False when it overruns."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def scenario_fork(result: dict[str, Any]) -> None:
    """``FORKS`` children each query and ``close_all()``; the parent queries after each."""
    from django.db import connections

    client_port()
    parent_errors, shared, child_errors, parent_ports = 0, 0, [], set()
    for _ in range(FORKS):
        before = _open_port()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_fd)
            try:
                report: dict[str, Any] = {"port": client_port()}
                connections.close_all()
            except Exception as exc:
                report = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_fd, json.dumps(report).encode())
            os._exit(0)
        os.close(write_fd)
        if not _wait(pid):
            child_errors.append("the child hung")
        with os.fdopen(read_fd, "rb") as pipe:
            report = json.loads(pipe.read() or b"{}")
        if "error" in report:
            child_errors.append(report["error"])
        shared += before is not None and report.get("port") == before
        try:
            parent_ports.add(client_port())
        except Exception:
            parent_errors += 1
            connections["default"].close()
    result.update(
        forks=FORKS,
        parent_errors=parent_errors,
        shared=shared,
        child_errors=child_errors,
        parent_ports=len(parent_ports),
    )


def _task(_: int) -> tuple[int, int]:
    return os.getpid(), client_port()


def scenario_pool(result: dict[str, Any]) -> None:
    """A 2-process fork pool maps 20 tasks after the parent used the database."""
    import multiprocessing

    parent = client_port()
    pool: Any
    if result["mode"] == "plain":
        pool = multiprocessing.get_context("fork").Pool(2)
    else:
        import forksafe

        pool = forksafe.Pool(2, context=forksafe.get_context("fork"))
    by_pid: dict[int, set[int]] = {}
    try:
        for pid, port in pool.map_async(_task, range(20), chunksize=1).get(timeout=DEADLINE):
            by_pid.setdefault(pid, set()).add(port)
        pool.close()
    except Exception as exc:
        result["child_errors"] = [f"{type(exc).__name__}: {exc}"]
        pool.terminate()
    pool.join()
    try:
        result["parent_same_port"] = client_port() == parent
    except Exception as exc:
        result["parent_error"] = f"{type(exc).__name__}: {exc}"
    result.update(
        parent_port=parent, worker_ports={str(p): sorted(ports) for p, ports in by_pid.items()}
    )


def scenario_threads(result: dict[str, Any]) -> None:
    """10 plain threads query once and end (``install(threads=True)`` in forksafe modes).

    No garbage collection meanwhile: plain Django's connections of ended threads
    stay open until the cyclic GC runs, and under session pooling each holds a
    server connection of the pool.
    """
    import gc

    gc.disable()
    ports: list[int] = []
    errors: list[str] = []

    def one() -> None:
        try:
            ports.append(client_port())
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    client_port()
    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    import urllib.parse

    from tests.harness.pgbouncer import tcp_ports_of

    pooler_port = urllib.parse.urlsplit(result["database"]).port or 5432
    # Connections this process still holds to the pooler (the parent's one among them).
    open_after = len(tcp_ports_of(os.getpid(), pooler_port))
    result.update(thread_ports=len(set(ports)), child_errors=errors, open_after=open_after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.programs.pooler_scenarios")
    parser.add_argument("scenario", choices=("fork", "pool", "threads"))
    parser.add_argument("--database", required=True)
    parser.add_argument("--mode", choices=("plain", "forksafe", "detach"), default="forksafe")
    args = parser.parse_args(argv)

    from forksafe._urls import configure_django

    configure_django(args.database)
    if args.mode != "plain":
        import forksafe

        forksafe.install(close_before_fork=args.mode == "forksafe", threads=True)
    import django

    django.setup()
    result: dict[str, Any] = {
        "scenario": args.scenario,
        "mode": args.mode,
        "database": args.database,
    }
    {"fork": scenario_fork, "pool": scenario_pool, "threads": scenario_threads}[args.scenario](
        result
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
