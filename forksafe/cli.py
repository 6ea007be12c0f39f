"""The ``forksafe`` console script (also ``python -m forksafe``)."""

from __future__ import annotations

import sys

__all__ = ["main"]

_USAGE = """usage: forksafe COMMAND [options]

commands:
  demo    run the fork scenarios, plain Django vs forksafe, and print what was measured
  doctor  check this deployment's settings, environment and databases (exit 1 on problems)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``forksafe COMMAND ...``; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from forksafe.demo import main as demo_main

        return demo_main(rest)
    if command == "doctor":
        from forksafe.doctor import main as doctor_main

        return doctor_main(rest)
    sys.stderr.write(f"forksafe: unknown command {command!r}\n{_USAGE}")
    return 2
