"""Run Python in a fresh interpreter (no ``forksafe.install()`` unless it calls it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The checkout (tests/harness/ is two levels below it).
ROOT = Path(__file__).resolve().parents[2]


def run_python(
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
) -> Any:
    """``python ARGS`` from the repository root (``env`` added to this environment, the
    variables ``unset`` left out); its last stdout line, parsed as JSON.

    Fails the test (with the script's stderr) when it exits non-zero or prints nothing.
    """
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            key: value
            for key, value in {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}.items()
            if key not in unset
        },
        cwd=ROOT,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1])
