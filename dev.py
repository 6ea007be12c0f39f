#!/usr/bin/env python3
"""Developer entry point; needs nothing but Python 3.11+.

    python3 dev.py demo [--database URL]   # the demo, in ./.venv (uWSGI rows included)
    python3 dev.py test [nox args]         # lint + tests (the CI rows of the matrix)

Both create ``.venv`` on first use and refresh it when ``pyproject.toml`` changes.
``test`` finds pyenv's interpreters as ``.ci/run`` does and fails, naming the
interpreter, when a Python the sessions need is missing (nox would skip that row).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
DEMO_EXTRAS = "demo,psycopg,pymysql"
# The demo's most telling rows run real uWSGI servers; uwsgi compiles from source.
UWSGI_COMMAND = f"{BIN / 'python'} -m pip install -e '{ROOT}[uwsgi]'"


def _ensure_venv(extras: str, *packages: str) -> None:
    """Create ``.venv`` and install forksafe[extras] into it, once per pyproject version."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an old python3
        sys.exit(f"forksafe needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / f".forksafe-{extras}"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + repr(packages).encode())
    if stamp.exists() and stamp.read_text() == wanted.hexdigest():
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV} ...", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{ROOT}[{extras}]", *packages], check=True)
    stamp.write_text(wanted.hexdigest())


def _demo_venv() -> None:
    """``.venv`` with what every demo row needs; without uWSGI (and saying so) if it won't build."""
    try:
        _ensure_venv(f"{DEMO_EXTRAS},uwsgi")
    except subprocess.CalledProcessError:
        _ensure_venv(DEMO_EXTRAS)
        print(
            "note: uwsgi did not install (it compiles: it needs a C compiler and the Python"
            " headers), so the demo skips its uWSGI rows. To see them, fix that and run:\n"
            f"  {UWSGI_COMMAND}\n  python3 dev.py demo --only uwsgi",
            file=sys.stderr,
            flush=True,
        )


def _pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        proc = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _test_path() -> str:
    """``PATH`` with pyenv's Python 3.11+ interpreters appended (as ``.ci/run`` does)."""
    path = os.environ.get("PATH", "")
    root = _pyenv_root()
    if root is not None:
        for bin_dir in sorted(glob.glob(str(root / "versions" / "3.1[1-9]*" / "bin"))):
            path += os.pathsep + bin_dir
    return path


def _missing_pythons(nox_args: list[str], path: str) -> list[str]:
    """The ``pythonX.Y`` interpreters the selected nox sessions need and ``path`` lacks."""
    proc = subprocess.run(
        [str(BIN / "nox"), "--list", "--json", *nox_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
    )
    if proc.returncode != 0:
        return []  # nox reports bad arguments itself, in the real run
    wanted = {s["python"] for s in json.loads(proc.stdout) if s.get("python")}
    return sorted(f"python{v}" for v in wanted if shutil.which(f"python{v}", path=path) is None)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        _demo_venv()
        return subprocess.call([str(BIN / "forksafe"), "demo", *rest], cwd=ROOT)
    _ensure_venv("demo", "nox>=2024.4.15")
    args = rest or ["-t", "ci"]
    path = _test_path()
    missing = _missing_pythons(args, path)
    if missing:
        print(
            f"error: {', '.join(missing)} not found (PATH, pyenv): nox would skip the sessions"
            " that need it and report success. Install it (e.g. `pyenv install 3.13`) or put it"
            " on PATH.",
            file=sys.stderr,
        )
        return 1
    # Belt and braces: a missing interpreter is an error, never a skipped session.
    nox = [str(BIN / "nox"), "--no-color", "--error-on-missing-interpreters", *args]
    return subprocess.call(nox, cwd=ROOT, env={**os.environ, "PATH": path})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
