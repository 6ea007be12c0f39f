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
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

HERE = Path(__file__).resolve().parent
if not __package__:  # `python run.py`: make `uwsgi_examples` and `tests.harness` importable
    sys.path.insert(0, str(HERE.parent))

# The one start/stop implementation of every process the tests start (a checkout's tests/).
from tests.harness.processes import ManagedProcess, free_port  # noqa: E402

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


class Server(ManagedProcess):
    """One example server process group on 127.0.0.1, stopped for sure on exit.

    The start/stop/log machinery is the tests' :class:`~tests.harness.processes.ManagedProcess`;
    this class adds the example's command line, a free port (and another one when that
    port is taken meanwhile) and "ready" meaning that one of its processes answers.
    """

    name = "the server"
    #: uWSGI, uvicorn and daphne stop on SIGINT (gunicorn too, quickly: see graceful_signal).
    stop_signal = signal.SIGINT
    #: The directory the server runs in (a subclass serving another project sets its own).
    cwd: Path | str | None = HERE

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
        super().__init__([])
        self._pick_port()

    def _pick_port(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        processes, extra = self._command
        self.cmd = command(self.config, processes=processes, extra=extra, port=self.port)
        self.env = environment(
            self._database_url, self.port, forksafe=self._forksafe, **self._extra_env
        )

    def start(self, timeout: float = 60.0, attempts: int = 5) -> Self:
        """Start it and wait until it answers (``RuntimeError`` with its log if it never does).

        :func:`free_port` can only say the port was free a moment ago: when some
        other process took it meanwhile, the server cannot bind it and starts
        again on another port (``attempts`` times at most).
        """
        for attempt in range(1, attempts + 1):
            try:
                return super().start(timeout)
            except PortInUse:
                if attempt == attempts:
                    raise
                self._pick_port()
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
            if _port_in_use(self.log()):
                raise PortInUse(f"port {self.port} is taken:\n{self.log()}")
            self.check_running()
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
    def graceful_signal(self) -> int:
        """The signal that stops this server gracefully (gunicorn: SIGTERM; SIGINT is quick)."""
        return signal.SIGTERM if self.config.startswith("gunicorn") else signal.SIGINT


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
