"""Running ``forksafe demo`` as the real console script, and reading the tables it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def demo(
    *args: str, cwd: Path, hide_matplotlib: bool = False, hide_dj_database_url: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m forksafe demo ARGS`` (from ``cwd``, not the checkout)."""
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if hide_dj_database_url:
        # As if only the base package were installed, in the demo's scenario processes too.
        shim = cwd / "no-extras"
        (shim / "dj_database_url").mkdir(parents=True, exist_ok=True)
        (shim / "dj_database_url" / "__init__.py").write_text("raise ImportError('hidden')\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    if hide_matplotlib:
        # As if the optional extra were not installed: the import fails.
        code = (
            "import sys; sys.modules['matplotlib'] = None; from forksafe.cli import main;"
            " sys.exit(main(sys.argv[1:]))"
        )
        cmd = [sys.executable, "-c", code, "demo", *args]
    else:
        cmd = [sys.executable, "-m", "forksafe", "demo", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def table_rows(stdout: str, columns: int) -> list[list[str]]:
    """The rows of the printed tables with ``columns`` cells (header and rules left out)."""
    rows = []
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == columns and not set(cells[0]) <= {"-"} and cells[0] != "scenario":
            rows.append(cells)
    return rows


def scenario_verdicts(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(scenario title, mode) -> its cells, for the main table."""
    return {(r[0], r[1]): r for r in table_rows(stdout, 6) if r[1] in ("plain", "forksafe")}
