"""One managed subprocess: every server and worker the tests and benchmarks start.

:class:`ManagedProcess` starts a command in a process group of its own with its
output in an anonymous file, waits (with a deadline) until it is ready, and
stops it for sure: a signal to the first process (or the whole group), a
deadline, then SIGKILL to the whole group -- also when starting fails, since
``with`` never reaches ``__exit__`` when ``__enter__`` raises. Subclasses say
what to run (:attr:`cmd`, :attr:`env`, :attr:`cwd`), what "ready" means
(:meth:`wait_ready`) and which signal stops them (:attr:`stop_signal`).

Standard library only, no pytest: the example project's runner
(``uwsgi_examples/run.py``, which the demo uses from a checkout) builds on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["ManagedProcess", "free_port", "wait_listening"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (it may be taken next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ManagedProcess:
    """A subprocess in its own process group, its output kept, stopped for sure on exit."""

    #: What "it" is, in error messages.
    name = "the process"
    #: The signal :meth:`stop` sends unless told otherwise.
    stop_signal: int = signal.SIGTERM
    #: The directory it runs in (None: this one).
    cwd: Path | str | None = None

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.env = env
        # Readable after stop() too; an anonymous file, gone with this object.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        """Start it; wait (at most ``timeout`` s) until :meth:`wait_ready` says it is ready.

        When it never is (or anything else goes wrong), its whole process group is
        killed before the exception propagates.
        """
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
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Return once it is ready; raise when it never is (default: ready at once)."""

    def check_running(self) -> None:
        """Raise ``RuntimeError`` with its output if it has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the first process (a master, an arbiter, a worker's main)."""
        os.kill(self.pid, signum)

    def children(self) -> list[int]:
        """The pids of the first process's child processes (workers, mules...)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def log(self, tail: int | None = 20000) -> str:
        """Everything it printed so far: the last ``tail`` characters (None: all of it)."""
        # pread: its processes write through the same file offset; never move it.
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        start = 0 if tail is None else max(0, size - 4 * tail)
        text = os.pread(fd, size - start, start).decode(errors="replace")
        return text if tail is None else text[-tail:]

    def stop(
        self, timeout: float = 20.0, signum: int | None = None, *, group: bool = False
    ) -> int | None:
        """Stop it: ``signum`` (default :attr:`stop_signal`), then SIGKILL for the process group.

        ``group``: send ``signum`` to the whole process group, as a terminal's Ctrl-C does,
        instead of the first process alone. Returns the exit status when it stopped within
        ``timeout`` after ``signum``, else None (it was killed, had ended already or had not
        started).
        """
        if self.proc is None:
            return None
        status: int | None = None
        if self.proc.poll() is None:
            signum = self.stop_signal if signum is None else signum
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_listening(process: ManagedProcess, port: int, timeout: float) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port`` while ``process``
    runs (``RuntimeError`` with its output when it exits or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        process.check_running()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{process.name} did not listen in {timeout} s:\n{process.log()}"
                ) from None
            time.sleep(0.05)
