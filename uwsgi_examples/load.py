"""Fire concurrent requests at the example server and say which sessions answered.

    python load.py --url http://127.0.0.1:8000/ [--requests 1000] [--concurrency 32]
                   [--database URL]

Prints the errors, the distinct worker pids and backend sessions seen, the
workers that shared a session (with each other or with the process that loaded
the application), and -- with ``--database`` -- the server-side session count.
Every request has a timeout, so a hung worker shows up as an error, not a hang.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.parse
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoadResult", "fire", "fire_keepalive", "get"]


@dataclass
class LoadResult:
    """What one load run saw."""

    responses: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def pids(self) -> set[int]:
        return {r["pid"] for r in self.responses}

    @property
    def backends(self) -> set[int]:
        return {r["backend"] for r in self.responses}

    @property
    def backends_by_pid(self) -> dict[int, set[int]]:
        seen: dict[int, set[int]] = defaultdict(set)
        for r in self.responses:
            seen[r["pid"]].add(r["backend"])
        return dict(seen)

    @property
    def shared_backends(self) -> dict[int, set[int]]:
        """Backend id -> the pids that used it, for backends used by more than one process.

        Always empty for SQLite: its "backend id" is the handle's address, which
        forked workers repeat for handles of their own.
        """
        users: dict[int, set[int]] = defaultdict(set)
        for r in self.responses:
            if r.get("vendor") != "sqlite":
                users[r["backend"]].add(r["pid"])
        return {b: pids for b, pids in users.items() if len(pids) > 1}

    @property
    def on_loader_session(self) -> int:
        """Responses of a worker that ran on the loading process's session."""
        return sum(
            1
            for r in self.responses
            if r["pid"] != r["loader_pid"] and r["backend"] == r["loader_backend"]
        )

    @property
    def requests_per_second(self) -> float:
        return len(self.responses) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        lines = [
            f"requests: {len(self.responses) + len(self.errors)} in {self.seconds:.2f} s"
            f" ({self.requests_per_second:.0f}/s), errors: {len(self.errors)}",
            f"distinct worker pids: {len(self.pids)},"
            f" distinct backend sessions: {len(self.backends)}",
            f"responses on the loader's session: {self.on_loader_session}",
            f"sessions shared by several processes: {len(self.shared_backends)}",
        ]
        lines += [f"  error: {e}" for e in sorted(set(self.errors))[:5]]
        return "\n".join(lines)


def get(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """One GET; the JSON answer. Raises on a non-200 status or a timeout."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        data: dict[str, Any] = json.loads(body)
        return data
    finally:
        conn.close()


def fire(
    url: str, requests: int = 1000, concurrency: int = 32, timeout: float = 10.0
) -> LoadResult:
    """``requests`` GETs with ``concurrency`` in flight; never longer than about
    ``requests / concurrency * timeout`` seconds."""
    result = LoadResult()

    def one(_: int) -> None:
        try:
            result.responses.append(get(url, timeout))
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    result.seconds = time.perf_counter() - start
    return result


def fire_keepalive(
    url: str, requests: int = 300, clients: int = 20, timeout: float = 10.0
) -> LoadResult:
    """``requests`` GETs from ``clients`` concurrent clients, each on one keep-alive connection.

    Each client sends its share of the requests over one HTTP/1.1 connection and
    closes it at the end (under gunicorn's gevent worker: one greenlet per client).
    """
    result = LoadResult()
    parts = urllib.parse.urlsplit(url)
    target = parts.path or "/"

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout
        )
        try:
            for _ in range(requests // clients + (n < requests % clients)):
                try:
                    conn.request("GET", target)
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
                    result.responses.append(json.loads(body))
                except Exception as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    result.seconds = time.perf_counter() - start
    return result


def server_sessions(database_url: str) -> int | None:
    """Client sessions on the database server (None for SQLite)."""
    from django.conf import settings

    from forksafe._sessions import count_sessions
    from forksafe._urls import configure_django

    if not settings.configured:
        import django

        configure_django(database_url)
        django.setup()
    return count_sessions()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--database", help="the server's DATABASE_URL, to count sessions")
    args = parser.parse_args(argv)
    result = fire(args.url, args.requests, args.concurrency, args.timeout)
    print(result.summary())
    if args.database:
        print(f"server-side sessions now: {server_sessions(args.database)}")
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
