#!/usr/bin/env python3
"""Developer entry point; needs nothing but Python 3.11+.

    python3 dev.py demo [--database URL]   # the demo, in ./.venv
    python3 dev.py test [nox args]         # lint + tests (the CI rows of the matrix)

Both create ``.venv`` on first use and refresh it when ``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        _ensure_venv("demo,psycopg,pymysql")
        return subprocess.call([str(BIN / "forksafe"), "demo", *rest], cwd=ROOT)
    _ensure_venv("demo", "nox>=2024.4.15")
    args = rest or ["-t", "ci"]
    return subprocess.call([str(BIN / "nox"), "--no-color", *args], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
