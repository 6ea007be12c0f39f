"""A real PgBouncer for the tests: its own process on a free loopback port, stopped afterwards.

:class:`PgBouncer` writes a configuration for the run's PostgreSQL database only
(``[databases]`` names that one database) into a temporary directory, starts
Debian's ``pgbouncer`` in the foreground with a deadline, and reads its admin
console (``SHOW POOLS``, ``SHOW CLIENTS``...) and its log. PgBouncer refuses to
run as root: as root the configuration drops to the ``postgres`` user.

:func:`require_pgbouncer` skips a test when ``pgbouncer`` is not installed, or
fails it when the environment variable ``CI`` is set (any value).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Self

import pytest

from forksafe import _pooler
from tests.harness.processes import ManagedProcess, free_port, wait_listening

#: The PgBouncer tests run for these drivers only: the pooler speaks PostgreSQL's protocol.
DRIVERS = ("psycopg", "psycopg2")


def binary() -> str | None:
    """The ``pgbouncer`` executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def require_pgbouncer(driver: str) -> str:
    """The ``pgbouncer`` executable; skips (or, with ``CI`` set, fails) when it cannot run."""
    if driver not in DRIVERS:
        pytest.skip(
            f"PgBouncer tests run for {' and '.join(DRIVERS)} only (PgBouncer pools PostgreSQL;"
            " the detach per driver is tested elsewhere)"
        )
    exe = binary()
    if exe is None:
        reason = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}")
        pytest.skip(reason)
    return exe


class PgBouncer(ManagedProcess):
    """One PgBouncer in front of the database of ``db_url``, pooling in ``mode``.

    ``settings`` go into the ``[pgbouncer]`` section as they are (e.g.
    ``{"default_pool_size": "5"}``). SIGTERM stops it (immediate shutdown).
    """

    name = "pgbouncer"

    def __init__(
        self,
        exe: str,
        db_url: str,
        *,
        mode: str = "transaction",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.exe = exe
        self.mode = mode
        self.db_url = db_url
        parts = urllib.parse.urlsplit(db_url)
        self.user = urllib.parse.unquote(parts.username or "postgres")
        self.dbname = parts.path.lstrip("/")
        self.server_host = parts.hostname or "127.0.0.1"
        self.server_port = parts.port or 5432
        self.port = free_port()
        self.settings = settings or {}
        self.dir = Path(tempfile.mkdtemp(prefix="forksafe-pgbouncer-"))
        super().__init__([exe, str(self.dir / "pgbouncer.ini")])

    @property
    def url(self) -> str:
        """``db_url`` with the pooler's address: what the application connects to."""
        parts = urllib.parse.urlsplit(self.db_url)
        netloc = parts.netloc.rpartition("@")[0]
        netloc = f"{netloc}@127.0.0.1:{self.port}" if netloc else f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def _write_config(self) -> Path:
        self.dir.mkdir(exist_ok=True)
        lines = [
            "[databases]",
            f"{self.dbname} = host={self.server_host} port={self.server_port} dbname={self.dbname}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",  # no socket in /tmp that another instance could want
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            f"admin_users = {self.user}",
            f"pool_mode = {self.mode}",
        ]
        if os.geteuid() == 0:  # "PgBouncer should not run as root"
            try:
                lines.append(f"user = {pwd.getpwnam('postgres').pw_name}")
            except KeyError:
                lines.append("user = nobody")
        lines += [f"{k} = {v}" for k, v in self.settings.items()]
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text("\n".join(lines) + "\n")
        # Readable by the user PgBouncer switches to.
        self.dir.chmod(0o755)
        for path in self.dir.iterdir():
            path.chmod(0o644)
        return ini

    def start(self, timeout: float = 15.0) -> Self:
        """Write its configuration, start it; wait (at most ``timeout`` s) until it listens."""
        self._write_config()
        return super().start(timeout)

    def wait_ready(self, timeout: float) -> None:
        # Listening is enough (the console may refuse this user: a test may want that).
        wait_listening(self, self.port, timeout)

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console, as one dict per row."""
        conn = self._console()
        try:
            return _pooler.show(conn, what)
        finally:
            conn.close()

    def admin(self, command: str) -> None:
        """Run a console command (``SET client_idle_timeout = 30``, ``RELOAD``...)."""
        conn = self._console()
        try:
            conn.cursor().execute(command)
        finally:
            conn.close()

    def _console(self) -> Any:
        from django.db import connection

        params = {"host": "127.0.0.1", "port": self.port, "user": self.user}
        database: Any = connection.Database  # type: ignore[attr-defined]
        return _pooler.connect_console(database, params, timeout=3)

    def clients(self) -> list[dict[str, Any]]:
        """The client connections to the test database (the console's own left out)."""
        return [c for c in self.show("CLIENTS") if c["database"] == self.dbname]

    def unexpected_eofs(self) -> int:
        """Client connections that went away without a goodbye (PgBouncer's own log lines)."""
        return self.log(tail=None).count("client unexpected eof")

    def stop(
        self, timeout: float = 20.0, signum: int | None = None, *, group: bool = False
    ) -> int | None:
        """Stop it (SIGTERM: immediate shutdown) and remove its configuration; the log stays."""
        try:
            return super().stop(timeout, signum, group=group)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def tcp_ports_of(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP connections to 127.0.0.1:``remote_port`` (from /proc).

    Which process holds which client connection to the pooler: the socket inodes
    among the process's descriptors, matched with /proc/net/tcp.
    """
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir() if fd_dir.exists() else ():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == remote_port:
            ports.add(int(local.split(":")[1], 16))
    return ports
