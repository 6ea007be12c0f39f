"""Start the example project under uWSGI or gunicorn: one command per configuration.

    python run.py preforked|threads|lazy-apps|mules|gunicorn
                  [--database URL] [--port 8000] [--processes 4] [--no-forksafe]

Runs ``manage.py migrate`` first, then the server in the foreground (Ctrl-C
stops it). The database is ``--database``, else ``DATABASE_URL``, else an
SQLite file beside this script. Then, in another shell::

    python load.py --url http://127.0.0.1:8000/ --database URL

The :class:`Server` class does the same for the tests and the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

HERE = Path(__file__).resolve().parent
if not __package__:  # `python run.py`: make `uwsgi_examples.load` importable
    sys.path.insert(0, str(HERE.parent))
CONFIGS = ("preforked", "threads", "lazy-apps", "mules", "no-master", "gunicorn")
DEFAULT_DATABASE = f"sqlite:///{HERE / 'example.sqlite3'}"

__all__ = [
    "CONFIGS",
    "Server",
    "binary",
    "command",
    "environment",
    "free_port",
    "missing",
    "migrate",
]


def binary(name: str) -> str | None:
    """The ``uwsgi`` / ``gunicorn`` executable of this Python environment, else on PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def missing(name: str) -> str | None:
    """Why the ``uwsgi`` / ``gunicorn`` server cannot run here, or None when it can."""
    if binary(name) is None:
        return f"{name} is not installed in {sys.prefix} (pip install 'forksafe[{name}]')"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def environment(
    database_url: str, port: int, *, forksafe: str = "1", **extra: str
) -> dict[str, str]:
    """The environment the example server runs with."""
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        DATABASE_URL=database_url,
        EXAMPLE_PORT=str(port),
        EXAMPLE_FORKSAFE=forksafe,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def command(config: str, *, processes: int = 4, extra: tuple[str, ...] = ()) -> list[str]:
    """The command line that starts ``config`` (one of :data:`CONFIGS`)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; choose one of {', '.join(CONFIGS)}")
    name = "gunicorn" if config == "gunicorn" else "uwsgi"
    exe = binary(name)
    if exe is None:
        raise FileNotFoundError(f"{name} is not installed: pip install {name}")
    if config == "gunicorn":
        return [exe, "-c", str(HERE / "gunicorn.conf.py"), "--workers", str(processes), *extra]
    return [
        exe,
        "--ini",
        str(HERE / f"{config}.ini"),
        "--virtualenv",
        sys.prefix,
        "--processes",
        str(processes),
        *extra,
    ]


def migrate(database_url: str, *, settings: str | None = None) -> None:
    """Create the example's tables (``manage.py migrate``) in ``database_url``.

    ``settings``: a settings module other than ``exampleproject.settings``
    (``exampleproject.settings_large``).
    """
    extra = {"DJANGO_SETTINGS_MODULE": settings} if settings else {}
    subprocess.run(
        [sys.executable, str(HERE / "manage.py"), "migrate", "--verbosity", "0"],
        env=environment(database_url, 0, **extra),
        cwd=HERE,
        check=True,
        timeout=120,
    )


class Server:
    """One example server process group on 127.0.0.1, stopped for sure on exit."""

    def __init__(
        self,
        config: str,
        database_url: str,
        *,
        forksafe: str = "1",
        processes: int = 4,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cmd = command(config, processes=processes, extra=extra)
        self.env = environment(database_url, self.port, forksafe=forksafe, **(env or {}))
        # Readable after stop() too; an anonymous file, gone with this object.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Server:
        """Start it and wait until it answers (``RuntimeError`` with its log if it never does)."""
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=HERE,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            # ``with Server(...)`` never reaches __exit__ when __enter__ raises: stop the
            # whole process group here, or a half-started master keeps running (and keeps
            # its database session) after the test.
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until a request gets an answer."""
        from uwsgi_examples.load import get

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                get(self.url, timeout=5)
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the master / arbiter."""
        os.kill(self.pid, signum)

    def children(self) -> list[int]:
        """The pids of the master's child processes (workers, mules...)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def log(self) -> str:
        """Everything the server printed so far (the last 20,000 characters)."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-20000:]

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server: SIGINT, then SIGKILL for the whole process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("--database", default=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--no-forksafe", action="store_true", help="plain Django (the control)")
    args = parser.parse_args(argv)
    migrate(args.database)
    env = environment(args.database, args.port, forksafe="0" if args.no_forksafe else "1")
    if args.config == "mules":
        env.setdefault("EXAMPLE_MULE_REPORT", str(HERE / "mule-report.json"))
        env.setdefault("EXAMPLE_SPOOL_REPORT", str(HERE / "spool-report.json"))
        env.setdefault("EXAMPLE_SPOOL_DIR", str(HERE / "spool"))
        os.makedirs(env["EXAMPLE_SPOOL_DIR"], exist_ok=True)
    cmd = command(args.config, processes=args.processes)
    print(" ".join(cmd), flush=True)
    os.chdir(HERE)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
