"""Start the example project under uWSGI, gunicorn or an ASGI server: one command each.

    python run.py preforked|threads|lazy-apps|mules|gunicorn|uvicorn|daphne|gunicorn-uvicorn
                  [--database URL] [--port 8000] [--processes 4] [--no-forksafe]

``uvicorn`` and ``daphne`` serve ``exampleproject.asgi`` in one process;
``gunicorn-uvicorn`` runs gunicorn's arbiter with ``preload_app`` and uvicorn's
worker class (the application is loaded, and queries, before the fork).

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
CONFIGS = (
    "preforked",
    "threads",
    "lazy-apps",
    "mules",
    "no-master",
    "gunicorn",
    "uvicorn",
    "daphne",
    "gunicorn-uvicorn",
)
ASGI_CONFIGS = ("uvicorn", "daphne", "gunicorn-uvicorn")
ASGI_APP = "exampleproject.asgi:application"
DEFAULT_DATABASE = f"sqlite:///{HERE / 'example.sqlite3'}"

__all__ = [
    "ASGI_CONFIGS",
    "CONFIGS",
    "PortInUse",
    "Server",
    "binary",
    "command",
    "environment",
    "free_port",
    "missing",
    "migrate",
]


def binary(name: str) -> str | None:
    """The ``uwsgi`` / ``gunicorn`` / ... executable of this Python environment, else on PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def _programs(config: str) -> tuple[str, ...]:
    if config == "gunicorn-uvicorn":
        return ("gunicorn", "uvicorn")
    return (config,) if config in ("gunicorn", *ASGI_CONFIGS) else ("uwsgi",)


def missing(name: str) -> str | None:
    """Why the server ``name`` (a program or one of :data:`CONFIGS`) cannot run, or None."""
    for program in _programs(name) if name in CONFIGS else (name,):
        if binary(program) is None:
            extra = "asgi" if program in ("uvicorn", "daphne") else program
            return f"{program} is not installed in {sys.prefix} (pip install 'forksafe[{extra}]')"
    return None


class PortInUse(RuntimeError):
    """The server could not bind its port: some other process took it first."""


# What uWSGI, gunicorn, uvicorn and daphne print when the port is taken (lower-cased).
_IN_USE_MESSAGES = ("address already in use", "connection in use")


def _port_in_use(log: str) -> bool:
    text = log.lower()
    return any(message in text for message in _IN_USE_MESSAGES)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (it may be taken next)."""
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


def command(
    config: str, *, processes: int = 4, extra: tuple[str, ...] = (), port: int = 8000
) -> list[str]:
    """The command line that starts ``config`` (one of :data:`CONFIGS`) on ``port``.

    ``uvicorn`` and ``daphne`` run one process (``processes`` is ignored); the
    gunicorn configurations read the port from ``EXAMPLE_PORT``.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; choose one of {', '.join(CONFIGS)}")
    reason = missing(config)
    if reason is not None:
        raise FileNotFoundError(reason)
    name = _programs(config)[0]
    exe = binary(name)
    assert exe is not None
    if config == "uvicorn":
        return [
            exe,
            ASGI_APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            *extra,
        ]
    if config == "daphne":
        return [exe, "-b", "127.0.0.1", "-p", str(port), *extra, ASGI_APP]
    if config == "gunicorn-uvicorn":
        return [
            exe,
            "-c",
            str(HERE / "gunicorn.conf.py"),
            "--workers",
            str(processes),
            "--worker-class",
            "uvicorn.workers.UvicornWorker",
            *extra,
            ASGI_APP,
        ]
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

    #: The directory the server runs in (a subclass serving another project sets its own).
    cwd: Path = HERE

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
        self.config = config
        self._command = (processes, extra)
        self._database_url = database_url
        self._forksafe = forksafe
        self._extra_env = env or {}
        self._pick_port()
        # Readable after stop() too; an anonymous file, gone with this object.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def _pick_port(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        processes, extra = self._command
        self.cmd = command(self.config, processes=processes, extra=extra, port=self.port)
        self.env = environment(
            self._database_url, self.port, forksafe=self._forksafe, **self._extra_env
        )

    def start(self, timeout: float = 60.0, attempts: int = 5) -> Server:
        """Start it and wait until it answers (``RuntimeError`` with its log if it never does).

        :func:`free_port` can only say the port was free a moment ago: when some
        other process took it meanwhile, the server cannot bind it and starts
        again on another port (``attempts`` times at most).
        """
        for attempt in range(1, attempts + 1):
            self._log.seek(0)
            self._log.truncate()
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                self.wait_ready(timeout)
                return self
            except PortInUse:
                self.stop()
                if attempt == attempts:
                    raise
                self._pick_port()
            except BaseException:
                # ``with Server(...)`` never reaches __exit__ when __enter__ raises: stop the
                # whole process group here, or a half-started master keeps running (and keeps
                # its database session) after the test.
                self.stop()
                raise
        raise AssertionError("not reached")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until one of this server's processes answers a request.

        An answer from another process (another server that got the port first)
        does not count; the server saying it cannot bind raises :class:`PortInUse`.
        """
        from uwsgi_examples.load import get

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.proc.poll() is not None:
                if _port_in_use(self.log()):
                    raise PortInUse(f"port {self.port} is taken:\n{self.log()}")
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
            if _port_in_use(self.log()):
                raise PortInUse(f"port {self.port} is taken:\n{self.log()}")
            try:
                pid = get(self.url, timeout=5).get("pid")
                if pid == self.pid or pid in self.children():
                    return
                last = f"answered by pid {pid}, not one of this server's processes"
            except (OSError, ValueError, RuntimeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server did not answer in {timeout} s ({last}):\n{self.log()}"
                )
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
        # pread: the server's processes write through the same file offset; never move it.
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - 80000)
        return os.pread(fd, size - start, start).decode(errors="replace")[-20000:]

    @property
    def graceful_signal(self) -> int:
        """The signal that stops this server gracefully (gunicorn: SIGTERM; SIGINT is quick)."""
        return signal.SIGTERM if self.config.startswith("gunicorn") else signal.SIGINT

    def stop(
        self, timeout: float = 20.0, signum: int | None = None, *, group: bool = False
    ) -> int | None:
        """Stop the server: ``signum`` (default SIGINT), then SIGKILL for the process group.

        ``group``: send ``signum`` to the whole process group, as a terminal's Ctrl-C does,
        instead of the first process alone. Returns the exit status when it stopped within
        ``timeout`` after ``signum``, else None (it was killed).
        """
        if self.proc is None:
            return None
        status: int | None = None
        if self.proc.poll() is None:
            signum = signal.SIGINT if signum is None else signum
            if group:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        return status

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
    cmd = command(args.config, processes=args.processes, port=args.port)
    print(" ".join(cmd), flush=True)
    os.chdir(HERE)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
